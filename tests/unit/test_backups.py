"""Backup files: their names, the listing, and every check a file passes before a restore
touches anything (stackctl/backups.py)."""

import gzip
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from stackctl import backups
from stackctl.stack import ROOT

TABLE = "CREATE TABLE `{}` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;\n"


def dump(tables=backups.REQUIRED_TABLES, header="-- MariaDB dump 10.19  Distrib 11.8.3-MariaDB", use=(),
         trailer="-- Dump completed on 2026-12-03 14:00:00\n") -> bytes:
    """A file shaped like mariadb-dump's output (MariaDB 11 starts with its sandbox line)."""
    lines = ["/*M!999999\\- enable the sandbox mode */ \n", f"{header}\n", "--\n", "/*!40101 SET NAMES utf8mb4 */;\n"]
    for database in use:
        lines += [f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{database}` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n",
                  f"USE `{database}`;\n"]
    for table in tables:
        lines += [TABLE.format(table), f"INSERT INTO `{table}` VALUES (1),(2);\n"]
    return "".join(lines + ["\n", trailer]).encode()


def write(path, content: bytes, compress=True, checksum=True):
    path.write_bytes(gzip.compress(content) if compress else content)
    if checksum:
        path.with_name(path.name + ".sha256").write_text(
            backups.checksum_line(hashlib.sha256(path.read_bytes()).hexdigest(), path.name))
    return path


def test_a_backup_is_named_with_its_utc_time_and_the_alliance_auth_version():
    when = datetime(2026, 12, 3, 15, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    name = backups.backup_name(when, "5.5.0")
    assert name == "myauth-20261203T140000Z-allianceauth-5.5.0.sql.gz"
    assert backups.NAME.fullmatch(name)["version"] == "5.5.0"
    with pytest.raises(backups.BackupError, match="not a version number"):
        backups.backup_name(when, "5.5.0/../../x")


def test_the_listing_shows_backups_oldest_first_and_ignores_other_files(tmp_path):
    for hour in (14, 9):
        write(tmp_path / f"myauth-20261203T{hour:02d}0000Z-allianceauth-5.5.0.sql.gz", dump(), checksum=hour == 9)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".myauth-20261203T150000Z-allianceauth-5.5.0.sql.gz.partial").write_bytes(b"")
    listed = backups.list_backups(tmp_path)
    assert [(name[7:22], checked) for name, _, checked in listed] == [("20261203T090000", True), ("20261203T140000", False)]
    assert backups.list_backups(tmp_path / "none") == []


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_a_complete_dump_of_an_alliance_auth_database_passes_gzipped_or_plain(tmp_path, compress):
    found = backups.verify(write(tmp_path / "backup.sql.gz", dump(), compress=compress, checksum=compress))
    assert found == {"tables": list(backups.REQUIRED_TABLES), "compressed": compress, "migrations": set()}


def test_a_mysqldump_file_with_its_database_chosen_passes_and_imports_without_choosing_it(tmp_path):
    path = write(tmp_path / "aa.sql", dump(header="-- MySQL dump 10.13  Distrib 8.0.36", use=["alliance_auth"]),
                 compress=False, checksum=False)
    backups.verify(path)
    imported = b"".join(backups.import_stream(path))
    assert b"USE `" not in imported and b"CREATE DATABASE" not in imported and b"INSERT INTO `auth_user`" in imported


def refusal(path) -> str:
    with pytest.raises(backups.BackupError) as refused:
        backups.verify(path)
    return str(refused.value)


def test_a_truncated_file_is_refused_gzipped_or_plain(tmp_path):
    whole, plain = gzip.compress(dump()), dump()
    assert "is truncated: its gzip stream ends" in refusal(
        write(tmp_path / "a.sql.gz", whole[:len(whole) // 2], compress=False, checksum=False))
    assert "does not end with mariadb-dump's '-- Dump completed'" in refusal(
        write(tmp_path / "b.sql", plain[:len(plain) // 2], compress=False, checksum=False))


def test_a_corrupt_file_is_refused_by_its_checksum_or_by_gzip(tmp_path):
    path = write(tmp_path / "a.sql.gz", dump())
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(damaged)
    assert "does not match its checksum in a.sql.gz.sha256" in refusal(path)
    path.with_name("a.sql.gz.sha256").unlink()
    assert "is corrupt: gzip cannot read it" in refusal(path)


@pytest.mark.parametrize("content, message", [
    (b"", "does not begin with a '-- MariaDB dump'"),
    (b"hello, this is not SQL\n", "does not begin with a '-- MariaDB dump'"),
    (dump(tables=["django_migrations", "auth_user", "polls_question"]),
     "not a dump of an Alliance Auth database: it has no table authentication_userprofile, eveonline_evecharacter"),
    (dump(use=["alliance_auth", "mysql"]), "holds 2 databases"),
], ids=["empty", "not-a-dump", "another-django-project", "several-databases"])
def test_a_wrong_file_is_refused_naming_what_is_wrong(tmp_path, content, message):
    assert message in refusal(write(tmp_path / "wrong.sql.gz", content))


def test_a_missing_file_is_refused(tmp_path):
    assert "does not exist" in refusal(tmp_path / "nothing.sql.gz")


def test_the_scripts_have_no_default_directory_inside_git():
    assert (ROOT / ".gitignore").read_text().splitlines().count("backups/") == 1
    assert backups.DEFAULT_DIRECTORY == ROOT / "backups"


def test_a_backup_from_a_newer_alliance_auth_is_refused_an_older_one_or_a_plain_dump_is_not(tmp_path):
    newer = tmp_path / "myauth-20261203T140000Z-allianceauth-5.10.0.sql.gz"
    with pytest.raises(backups.BackupError, match="made with Alliance Auth 5.10.0, newer than this stack's 5.5.0"):
        backups.check_version(newer, "5.5.0")
    backups.check_version(tmp_path / "myauth-20261203T140000Z-allianceauth-4.12.1.sql.gz", "5.5.0")
    backups.check_version(tmp_path / "myauth-20261203T140000Z-allianceauth-5.5.0.sql.gz", "5.5.0")
    backups.check_version(tmp_path / "aa.sql", "5.5.0")
    backups.check_version(tmp_path / "myauth-20261203T140000Z-allianceauth-6.0.0b1.sql.gz", "5.5.0")  # not comparable


MIGRATIONS = ("INSERT INTO `django_migrations` VALUES (1,'contenttypes','0001_initial','2026-01-01 00:00:00.000000'),"
              "(2,'authentication','0024_alter_userprofile_language','2026-01-01 00:00:00.000000'),"
              "(3,'memberaudit','0001_initial','2026-01-01 00:00:00.000000');\n"
              "INSERT INTO `django_migrations` VALUES (4,'authentication','0025_from_a_newer_release','2026-01-01');\n")


def test_the_migrations_a_dump_applied_are_read_from_its_inserts(tmp_path):
    content = dump().replace(b"\n-- Dump completed", MIGRATIONS.encode() + b"-- Dump completed")
    assert backups.verify(write(tmp_path / "aa.sql", content, compress=False, checksum=False))["migrations"] == {
        ("contenttypes", "0001_initial"), ("authentication", "0024_alter_userprofile_language"),
        ("memberaudit", "0001_initial"), ("authentication", "0025_from_a_newer_release")}


def test_a_dump_with_migrations_the_stack_lacks_is_refused_apps_it_does_not_run_are_named_only(tmp_path):
    applied = {("contenttypes", "0001_initial"), ("authentication", "0024_squashed_away"),
               ("memberaudit", "0001_initial")}
    known = {("contenttypes", "0001_initial"), ("authentication", "0024_squashed_away"), ("authentication", "0025")}
    backups.check_migrations(tmp_path / "aa.sql", applied, known)
    assert backups.foreign_apps(applied, known) == ["memberaudit"]
    with pytest.raises(backups.BackupError, match=r"aa.sql is a database of a newer release: this stack's code "
                                                  r"lacks 1 of its migrations \(authentication.0026_newer\)"):
        backups.check_migrations(tmp_path / "aa.sql", applied | {("authentication", "0026_newer")}, known)
