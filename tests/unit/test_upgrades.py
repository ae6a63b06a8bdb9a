"""scripts/upgrade's checks before anything is touched, and the restore command it prints
(stackctl/upgrade.py)."""

import pytest

from stackctl import envfile, upgrade
from stackctl.stack import ROOT, Stack, StackError


def test_a_malformed_env_file_is_refused_before_anything_naming_the_variable(tmp_path):
    envfile.write_env_file(str(tmp_path / "bad.env"), WEB_PORT="eighty")
    with pytest.raises(StackError, match=r"refused, nothing was touched: .*bad.env:\nWEB_PORT="):
        upgrade.check(Stack(tmp_path / "bad.env"))


def test_the_restore_command_names_the_env_file_only_when_it_is_not_the_checkouts(tmp_path):
    backup = tmp_path / "myauth-20261203T140000Z-allianceauth-5.2.0.sql.gz"
    elsewhere = tmp_path / "stack.env"
    assert upgrade.restore_command(elsewhere, backup) == f"ENV_FILE={elsewhere} {ROOT}/scripts/restore {backup}"
    assert upgrade.restore_command(elsewhere, backup, "latest-previous") == \
        f"ENV_FILE={elsewhere} IMAGE_TAG=latest-previous {ROOT}/scripts/restore {backup}"
    assert upgrade.restore_command(ROOT / ".env", backup) == f"{ROOT}/scripts/restore {backup}"
