"""Docker Swarm without a swarm: the node labels the deployment needs (stackctl/swarm.py), and
the images' secret-env shim, which reads each secret from its file."""

import subprocess

import pytest

from stackctl import swarm
from stackctl.stack import ROOT


@pytest.mark.parametrize("core, workers, message", [
    ([], ["a"], "exactly one ready node must be labelled myauth.role=core"),
    (["a", "b"], ["a"], "found 2: a, b"),
    (["a"], [], "no ready node is labelled as a worker host (myauth.worker=true)"),
])
def test_nodes_without_the_labels_are_refused_naming_what_is_missing(core, workers, message):
    with pytest.raises(swarm.RenderError) as refused:
        swarm.check_nodes(core, workers)
    assert message in str(refused.value)


def test_secret_env_sets_each_variable_from_its_file_and_refuses_an_unreadable_one(tmp_path):
    shim = ROOT / "images" / "shared" / "secret-env"
    (tmp_path / "redis_password").write_text("s3cret-value\n")
    show = ["sh", "-c", 'echo "$REDISCLI_AUTH|${REDISCLI_AUTH_FILE:-gone}|$PLAIN"']
    base = {"PATH": "/usr/bin:/bin", "PLAIN": "kept"}
    result = subprocess.run(["sh", shim, *show], env={**base, "REDISCLI_AUTH_FILE": str(tmp_path / "redis_password")},
                            capture_output=True, text=True)
    assert result.stdout == "s3cret-value|gone|kept\n"
    assert subprocess.run(["sh", shim, *show], env=base, capture_output=True, text=True).stdout == "|gone|kept\n"
    result = subprocess.run(["sh", shim, "true"], env={**base, "SECRET_KEY_FILE": str(tmp_path / "missing")},
                            capture_output=True, text=True)
    assert result.returncode == 1 and f"SECRET_KEY_FILE={tmp_path / 'missing'} is not a readable file" in result.stderr
