"""Backup and restore on the running test stack (scripts/backup, scripts/restore; README,
"Backup and restore"): a backup taken under load, restored onto a fresh database volume, brings
back every row and the users' passwords; a truncated, corrupt or wrong file is refused before
anything is touched."""

import gzip
import subprocess
import time

import pytest

from stackctl import backups
from tests.integration.diagnostics import Poller, Stream
from tests.integration.members import Member, assert_logs_in, count_rows, script

MEMBER = Member("Backup", 90000001)


@pytest.fixture
def member(diag):
    """The member, removed afterwards: the stack is shared, and a later test that runs Alliance
    Auth's run_model_update would otherwise send its character to EVE's ESI (unreachable here,
    so the task hangs until its time limit)."""
    MEMBER.create(diag.stack)
    yield MEMBER
    MEMBER.delete(diag.stack)


def rows_in_dump(path, prefix: str) -> int:
    """Rows of diagnostics_taskrow in a backup whose label starts with `prefix` (the label is the
    column after the id: "(17,'prefix-...", one row a line or many)."""
    with gzip.open(path, "rt") as dump:
        return sum(line.count(f",'{prefix}") for line in dump)


def test_a_backup_under_load_restored_onto_a_fresh_volume_brings_back_every_row_and_the_password(
        diag, member, env_file, env, site, tmp_path, report):
    load = Stream(diag, "diagnostics.write_row", "backup-load", 200)
    load.start()
    diag.wait_for(lambda: diag.rows_written("backup-load-")[1] > 200, 120, "the load to be writing rows")
    poller = Poller(f"{site}/account/login/")
    poller.start()
    rows_before = diag.rows_written("backup-load-")[1]
    began = time.monotonic()
    made = script("backup", tmp_path, env_file=env_file)
    backup_seconds = time.monotonic() - began
    rows_after = diag.rows_written("backup-load-")[1]
    polls, sent = poller.stop(), load.stop()
    assert made.returncode == 0, made.stderr

    [(name, size, checked)] = backups.list_backups(tmp_path)
    path = tmp_path / name
    assert checked and backups.NAME.fullmatch(name)["version"] == diag.stack.exec(
        "web", "python3", "-c", "import allianceauth; print(allianceauth.__version__)").strip()
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}
    assert name in script("list-backups", tmp_path, env_file=env_file).stdout
    in_backup = rows_in_dump(path, "backup-load-")
    assert rows_before < rows_after, "the load was not writing while the dump ran"
    assert rows_before <= in_backup <= rows_after
    web_errors = [status for _, status in polls if status != 200]
    assert not web_errors, f"the web answered {web_errors} during the backup"
    diag.wait_until_ended(sent, 180)

    # A fresh install: the database volume destroyed, the stack up again on an empty database.
    diag.compose("rm", "--stop", "--force", "mariadb")
    subprocess.run(["docker", "volume", "rm", f"{env['COMPOSE_PROJECT_NAME']}_mariadb-data"], check=True,
                   capture_output=True)
    diag.compose("up", "--detach", "--wait")
    assert member.find(diag.stack)["user"] is False

    began = time.monotonic()
    restored = script("restore", path, env_file=env_file)
    restore_seconds = time.monotonic() - began
    assert restored.returncode == 0, restored.stdout + restored.stderr

    assert member.find(diag.stack) == member.expected
    assert diag.rows_written("backup-load-")[1] == in_backup
    assert_logs_in(site, member)
    report(f"backup under load ({len(sent)} row-writing tasks streamed, {rows_after - rows_before} rows written "
           f"during the dump): {backups.human_size(size)} in {backup_seconds:.1f} s, the login page answered "
           f"{len(polls)} polls, {len(web_errors)} errors; restore onto a fresh volume {restore_seconds:.0f} s "
           f"(stop, import, swap, migrate, start, healthy); every row back, the old password logs in")


def test_a_truncated_corrupt_or_wrong_file_is_refused_and_the_database_stays_as_it_was(diag, env_file, tmp_path):
    made = script("backup", tmp_path / "good", env_file=env_file)
    assert made.returncode == 0, made.stderr
    [(name, _, _)] = backups.list_backups(tmp_path / "good")
    good = (tmp_path / "good" / name).read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    wrong = tmp_path / "good" / f"{name}.sha256"  # the checksum file given instead of the backup
    (tmp_path / "truncated.sql.gz").write_bytes(good[:len(good) // 2])
    (tmp_path / "corrupt.sql.gz").write_bytes(corrupt)
    (tmp_path / "checksummed.sql.gz").write_bytes(corrupt)
    (tmp_path / "checksummed.sql.gz.sha256").write_text(wrong.read_text())
    cases = {
        tmp_path / "truncated.sql.gz": "is truncated",
        tmp_path / "corrupt.sql.gz": "is corrupt: gzip cannot read it",
        tmp_path / "checksummed.sql.gz": "does not match its checksum in checksummed.sql.gz.sha256",
        wrong: "is not a mariadb-dump file",
    }
    rows, web_started = count_rows(diag.stack), diag.container_state("web")["StartedAt"]

    for path, problem in cases.items():
        refused = script("restore", path, env_file=env_file)
        assert refused.returncode == 1 and refused.stdout == ""
        assert f"restore: refused, nothing was touched: {path} " in refused.stderr and problem in refused.stderr, \
            refused.stderr
    assert count_rows(diag.stack) == rows
    assert diag.container_state("web")["StartedAt"] == web_started, "a refused restore stopped the services"


def test_a_dump_that_fails_to_import_leaves_the_live_database_intact_and_the_stack_running(diag, env_file, tmp_path):
    made = script("backup", tmp_path, env_file=env_file)
    assert made.returncode == 0, made.stderr
    [(name, _, _)] = backups.list_backups(tmp_path)
    # Passes every check (a whole gzip stream, a mariadb-dump of Alliance Auth's tables), but MariaDB
    # stops at a statement halfway through, after the scratch database has half of the tables.
    lines = gzip.decompress((tmp_path / name).read_bytes()).splitlines(keepends=True)
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(gzip.compress(b"".join(lines[:len(lines) // 2] + [b"NOT SQL AT ALL;\n"] + lines[len(lines) // 2:])))
    rows = count_rows(diag.stack)

    failed = script("restore", broken, env_file=env_file)
    assert failed.returncode == 1 and "the import failed, the live database is unchanged" in failed.stderr, failed.stderr
    assert "starting the services again" in failed.stdout
    assert count_rows(diag.stack) == rows
    for service in ("web", "worker", "worker-cpu", "beat"):
        assert diag.container_state(service)["Health"]["Status"] == "healthy", service
