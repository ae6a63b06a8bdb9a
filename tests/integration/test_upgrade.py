"""Upgrades (scripts/upgrade; README, "Upgrading"), from an older release of this stack to this
checkout, on a stack of its own (the test project's name + "-upgrade"):

- the older release runs Alliance Auth 5.2 (tests/fixtures/allianceauth-5.2) on Debian 12's
  MariaDB 10.11, the version Alliance Auth's own docker setup ships. Its images are made
  without a registry like the stack's: images/mariadb on a debootstrapped debian:bookworm-slim,
  and this checkout's app image with the packages that differ installed over it;
- it holds a member (a password, a group, a state, a character);
- an upgrade whose migration fails leaves it running and names the backup and the command that
  restores it;
- the upgrade, with a backlog of queued tasks, brings it to this checkout's Alliance Auth and
  MariaDB 11.8 (mariadb-upgrade runs once): every row stays, the old password logs in, every
  queued task runs once;
- a plain `mysqldump` of the older install, as one moves in from Alliance Auth's own docker
  setup or a bare-metal install, restores into the upgraded stack.

The tests run in this order, on the one stack.
"""

import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from stackctl import backups, wheels
from stackctl.stack import ROOT, Stack
from tests.conftest import IMAGE_TAG, PROJECT, docker
from tests.integration.conftest import start_stack, write_env_file
from tests.integration.diagnostics import Diagnostics, calls, labels
from tests.integration.members import Member, assert_logs_in, count_rows, script

OLDER = ROOT / "tests" / "fixtures" / "allianceauth-5.2"
OLDER_DEBIAN = "debian:bookworm-slim"
TAG = f"{PROJECT}-upgrade"  # the upgrade stack's images: the older release's, then those scripts/upgrade builds
MEMBER = Member("Upgrade", 90000002)
BACKLOG = 200
# What Alliance Auth 5.5 has and 5.2 lacks.
NEWER_MIGRATIONS = {"admin_status.0003_softwareversion", "admin_status.0004_alter_applicationannouncement_managers",
                    "menu.0003_menuitem_permission_mode_menuitem_permissions"}
# What Django adds for the model those migrations create (admin_status' SoftwareVersion): its
# content type and its four permissions (add, change, delete, view).
NEWER_MODEL_ROWS = {"django_content_type": 1, "auth_permission": 4}
# As an operator of Alliance Auth's docker setup or a bare-metal install dumps its database.
MYSQLDUMP = 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mysqldump --user=root --single-transaction --databases "$MARIADB_DATABASE"'
# A dump of a newer Alliance Auth than the stack's: one migration more.
NEWER_RELEASE_ROW = b"INSERT INTO `django_migrations` VALUES (9999,'authentication','9999_from_a_newer_release','2026-12-03');\n"
FAILING_MIGRATION = '''from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("this migration fails on purpose (test_upgrade)")


class Migration(migrations.Migration):
    dependencies = [("diagnostics", "0001_initial")]
    operations = [migrations.RunPython(fail)]
'''


def locked_version(lock: Path, package: str) -> str:
    return next(version for name, version, _ in wheels.locked_requirements(lock) if name == package)


CURRENT_VERSION = locked_version(ROOT / "images" / "app" / "requirements.lock", "allianceauth")
OLDER_VERSION = locked_version(OLDER / "requirements.lock", "allianceauth")



def build_older_mariadb() -> str:
    """images/mariadb as it is, on Debian 12; returns its server's version."""
    made = subprocess.run([ROOT / "scripts" / "internal" / "bootstrap-base-image", OLDER_DEBIAN], capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    dockerfile = (ROOT / "images" / "mariadb" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)[1]
    docker("build", "--quiet", "--force-rm", "--tag", f"myauth-mariadb:{TAG}", "--file", "-", ".",
           input=dockerfile.replace(f"FROM {base}", f"FROM {OLDER_DEBIAN}"), cwd=ROOT)
    return docker("run", "--rm", "--entrypoint", "mariadbd", f"myauth-mariadb:{TAG}", "--version")


def build_older_app() -> None:
    """The app image with the older lock's differing packages over it (its Dockerfile says why)."""
    current = {(name, version) for name, version, _ in wheels.locked_requirements(
        ROOT / "images" / "app" / "requirements.lock")}
    differing = [r for r in wheels.locked_requirements(OLDER / "requirements.lock") if r[:2] not in current]
    context = ROOT / "build" / OLDER.name
    (context / "wheels").mkdir(parents=True, exist_ok=True)
    present = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (context / "wheels").iterdir()}
    for requirement in differing:
        wheels.fetch(requirement, present, context / "wheels")
    shutil.copy(OLDER / "requirements.lock", context)
    docker("build", "--quiet", "--force-rm", "--tag", f"myauth-app:{TAG}", "--build-arg", f"APP_IMAGE=myauth-app:{IMAGE_TAG}",
           "--file", str(OLDER / "Dockerfile"), str(context))


def allianceauth_version(stack) -> str:
    return stack.exec("web", "python3", "-c", "import allianceauth; print(allianceauth.__version__)").strip()


def applied_migrations(env_file) -> set:
    database = Stack(env_file)
    return set(database.sql(f"SELECT CONCAT(app, '.', name) FROM `{database.database}`.django_migrations").split())


def mariadb_version(env_file) -> str:
    return Stack(env_file).sql("SELECT VERSION()").strip()


def copy_of_checkout(target: Path) -> Path:
    """This checkout's files (tracked, or new and not ignored) and its wheelhouse (hard links): an
    operator's checkout of the next release."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "build" / "wheels", target / "build" / "wheels", copy_function=os.link)
    return target


@pytest.fixture(scope="module")
def older_images(built_images, report):
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        mariadb, app = pool.submit(build_older_mariadb), pool.submit(build_older_app)
        mariadb_server, _ = mariadb.result(), app.result()
    assert " 10.11." in mariadb_server, mariadb_server
    docker("tag", f"myauth-redis:{IMAGE_TAG}", f"myauth-redis:{TAG}")
    report(f"upgrade: the older release's images (MariaDB 10.11 on a debootstrapped Debian 12, Alliance Auth "
           f"{OLDER_VERSION} over the app image) made in {time.monotonic() - began:.0f} s")
    yield
    tagged = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference=myauth-*").split()
    for image in [i for i in tagged if i.partition(":")[2].startswith(TAG)]:
        subprocess.run(["docker", "rmi", image], capture_output=True)


@pytest.fixture(scope="module")
def older(older_images, tmp_path_factory, report):
    """The older release, running, with the member in it: its stack, env file, site, and a plain
    dump of its database taken the way another install's operator takes one."""
    directory = tmp_path_factory.mktemp("upgrade")
    env_file = write_env_file(directory / "upgrade.env", f"{PROJECT}-upgrade", IMAGE_TAG=TAG, COMPOSE_PROFILES="")
    began = time.monotonic()
    compose = start_stack(env_file)
    stack = Stack(env_file)
    try:
        report(f"upgrade: the older release's stack up and healthy in {time.monotonic() - began:.0f} s")
        assert allianceauth_version(stack) == OLDER_VERSION
        assert not NEWER_MIGRATIONS & applied_migrations(env_file)
        MEMBER.create(stack)
        dump = directory / f"allianceauth-{OLDER_VERSION}.sql"
        with open(dump, "wb") as out:
            subprocess.run(stack.exec_command("mariadb", "sh", "-c", MYSQLDUMP), cwd=ROOT, stdout=out, check=True)
        yield SimpleNamespace(stack=stack, env_file=env_file, site=stack.env["SITE_URL"], dump=dump, directory=directory)
    finally:
        compose.stop()


def test_an_upgrade_whose_migration_fails_keeps_the_old_services_running_and_names_the_backup_to_restore(
        older, tmp_path, report):
    checkout = copy_of_checkout(tmp_path / "checkout")
    (checkout / "myauth" / "diagnostics" / "migrations" / "0002_fails_on_purpose.py").write_text(FAILING_MIGRATION)
    diag = Diagnostics(older.stack)
    running = {service: diag.container_state(service)["StartedAt"] for service in ("web", "worker", "beat")}

    began = time.monotonic()
    failed = script("upgrade", tmp_path / "backups", env_file=older.env_file, root=checkout)
    seconds = time.monotonic() - began

    assert failed.returncode == 1, failed.stdout[-5000:] + failed.stderr
    assert "this migration fails on purpose" in failed.stdout
    [(name, _, checked)] = backups.list_backups(tmp_path / "backups")
    backup = tmp_path / "backups" / name
    assert checked and backups.NAME.fullmatch(name)["version"] == OLDER_VERSION
    assert f"The backup taken before the upgrade: {backup}\n" in failed.stderr, failed.stderr
    assert f"\n    ENV_FILE={older.env_file} {checkout.resolve()}/scripts/restore {backup}\n" in failed.stderr, failed.stderr
    assert {service: diag.container_state(service)["StartedAt"] for service in running} == running
    assert allianceauth_version(older.stack) == OLDER_VERSION
    assert requests.get(f"{older.site}/account/login/", timeout=30).status_code == 200
    assert_logs_in(older.site, MEMBER)
    report(f"upgrade with a failing migration: refused in {seconds:.0f} s (backup, build, migrate); "
           "the old web, worker and beat kept running")


@pytest.fixture(scope="module")
def upgraded(older, report):
    """The older stack with a backlog of tasks queued (its worker stopped), upgraded by
    scripts/upgrade to this checkout; what was there before, and how it went. (That a worker
    replaced by `docker compose up` finishes its running tasks first is
    test_changing_a_worker_setting_under_a_stream_of_tasks_runs_every_task_exactly_once.)"""
    diag = Diagnostics(older.stack)
    diag.reset()
    old_worker = diag.compose("ps", "--quiet", "worker").stdout.strip()
    diag.compose("stop", "worker")
    backlog = calls("diagnostics.write_row", "upgrade-backlog", BACKLOG)
    diag.enqueue(backlog)
    assert diag.queued() >= BACKLOG
    before = SimpleNamespace(rows=count_rows(older.stack), migrations=applied_migrations(older.env_file),
                             mariadb=mariadb_version(older.env_file), worker=old_worker)

    began = time.monotonic()
    upgrade = script("upgrade", older.directory / "backups", env_file=older.env_file)
    seconds = time.monotonic() - began
    assert upgrade.returncode == 0, upgrade.stdout[-8000:] + upgrade.stderr
    report(f"upgrade from Alliance Auth {OLDER_VERSION} on MariaDB {before.mariadb} to {CURRENT_VERSION}: {seconds:.0f} s "
           f"(backup, build, migrate, replace, healthy), {BACKLOG} tasks queued across it")
    return SimpleNamespace(diag=diag, backlog=labels(backlog), before=before, output=upgrade.stdout)


def test_an_upgrade_from_an_older_allianceauth_keeps_every_row_and_password_and_runs_every_queued_task_once(
        older, upgraded):
    diag, before = upgraded.diag, upgraded.before
    [backup] = re.findall(r"^upgrade: backed up the database to (\S+)$", upgraded.output, re.M)
    assert backups.NAME.fullmatch(Path(backup).name)["version"] == OLDER_VERSION
    assert allianceauth_version(older.stack) == CURRENT_VERSION
    assert NEWER_MIGRATIONS <= applied_migrations(older.env_file)

    diag.wait_until_ended(upgraded.backlog, 180)
    runs = diag.runs()
    assert {label: runs.get(label) for label in upgraded.backlog} == dict.fromkeys(upgraded.backlog, 1)
    assert not {e["container"] for e in diag.started("upgrade-backlog-")} & {before.worker[:12]}
    assert diag.rows_written("upgrade-backlog-") == (BACKLOG, BACKLOG)

    rows = count_rows(older.stack)
    assert {table: (count, rows.get(table)) for table, count in before.rows.items() if rows.get(table, -1) < count} == {}
    grown = {table: rows[table] - count for table, count in before.rows.items() if rows.get(table, 0) > count}
    assert grown == {"django_migrations": len(NEWER_MIGRATIONS - before.migrations), "diagnostics_taskrow": BACKLOG,
                     **NEWER_MODEL_ROWS}
    assert MEMBER.find(older.stack) == MEMBER.expected
    assert_logs_in(older.site, MEMBER)


def test_the_current_mariadb_takes_over_the_10_11_data_directory_running_mariadb_upgrade_once(older, upgraded):
    diag = upgraded.diag
    assert upgraded.before.mariadb.startswith("10.11.")
    server = docker("run", "--rm", "--entrypoint", "mariadbd", f"myauth-mariadb:{IMAGE_TAG}", "--version")
    current = re.search(r" Ver (\d+\.\d+\.\d+)", server)[1]
    assert mariadb_version(older.env_file).startswith(f"{current}-")
    upgrading = f"start-mariadb: upgrading the data directory of MariaDB {upgraded.before.mariadb.split('-')[0]} to {current}"
    assert diag.logs("mariadb").count(upgrading) == 1 and f"start-mariadb: upgraded to {current}" in diag.logs("mariadb")

    diag.compose("restart", "mariadb")
    diag.wait_healthy("mariadb")
    logs = diag.logs("mariadb")
    assert logs.count(upgrading) == 1 and logs.count("start-mariadb: upgrading") == 1, logs[-5000:]
    assert "first start" not in logs
    assert MEMBER.find(older.stack) == MEMBER.expected


def test_a_plain_mysqldump_of_the_older_install_restores_into_the_upgraded_stack(older, upgraded, tmp_path, report):
    diag = upgraded.diag
    lines = older.dump.read_bytes().splitlines(keepends=True)
    not_a_dump, cut, newer = tmp_path / "notes.sql", tmp_path / "cut.sql", tmp_path / "newer.sql"
    not_a_dump.write_text("SELECT 1;\n")
    cut.write_bytes(b"".join(lines[:len(lines) // 2]))
    newer.write_bytes(b"".join(lines[:-1]) + NEWER_RELEASE_ROW + lines[-1])
    rows, web_started = count_rows(older.stack), diag.container_state("web")["StartedAt"]
    for path, problem in {not_a_dump: "is not a mariadb-dump file", cut: "is truncated or incomplete",
                          newer: "is a database of a newer release: this stack's code lacks 1 of its migrations "
                                 "(authentication.9999_from_a_newer_release)"}.items():
        refused = script("restore", path, env_file=older.env_file)
        assert refused.returncode == 1 and refused.stdout == "", refused.stdout + refused.stderr
        assert f"restore: refused, nothing was touched: {path} " in refused.stderr and problem in refused.stderr
    assert count_rows(older.stack) == rows
    assert diag.container_state("web")["StartedAt"] == web_started, "a refused restore stopped the services"

    MEMBER.delete(older.stack)
    assert MEMBER.find(older.stack)["user"] is False
    began = time.monotonic()
    restored = script("restore", older.dump, env_file=older.env_file)
    seconds = time.monotonic() - began
    assert restored.returncode == 0, restored.stdout + restored.stderr + diag.logs("migrate")[-6000:]
    assert f"{older.dump.name} verified: a mariadb-dump of" in restored.stdout

    assert MEMBER.find(older.stack) == MEMBER.expected
    assert NEWER_MIGRATIONS <= applied_migrations(older.env_file)
    assert diag.rows_written("upgrade-backlog-") == (0, 0), "the dump was taken before the backlog ran"
    assert_logs_in(older.site, MEMBER)
    report(f"a plain mysqldump of Alliance Auth {OLDER_VERSION} on MariaDB 10.11 ({older.dump.stat().st_size // 1024} KiB) "
           f"restored into the current stack, migrated and healthy in {seconds:.0f} s")
