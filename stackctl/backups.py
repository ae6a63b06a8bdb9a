"""What scripts/backup, scripts/list-backups, scripts/restore and scripts/upgrade share: taking a
backup, backup file names, the checks a file must pass before a restore touches anything, and
how they reach the stack.

Standard library only: it runs on the host. A backup is one file, `mariadb-dump` output of the
stack's database, gzip-compressed, named

    myauth-<UTC time, 20261203T140000Z>-allianceauth-<version>.sql.gz

with `<name>.sha256` beside it (`sha256sum -c` reads it). A plain `mariadb-dump` or `mysqldump`
file of an Alliance Auth database, gzipped or not, is accepted by the restore too.
"""

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

from stackctl.stack import ROOT, Stack, StackError

DEFAULT_DIRECTORY = ROOT / "backups"
SUFFIX = ".sql.gz"
NAME = re.compile(r"myauth-(?P<time>\d{8}T\d{6}Z)-allianceauth-(?P<version>[0-9A-Za-z.+-]+)\.sql\.gz")
APP_SERVICES = ("web", "worker", "worker-cpu", "beat")
# Tables every Alliance Auth database has: Django's, and Alliance Auth's own.
REQUIRED_TABLES = ("django_migrations", "auth_user", "authentication_userprofile", "eveonline_evecharacter")
DUMP_HEADER = re.compile(rb"-- (MariaDB|MySQL) dump ")
DUMP_TRAILER = b"-- Dump completed"
CREATE_TABLE = re.compile(rb"CREATE TABLE `([^`]+)`")
# A row of Django's django_migrations (id, app, name, applied) in an INSERT, one or many a line.
MIGRATION_ROW = re.compile(rb"\(\d+,'([^']*)','([^']*)',")
# Lines that choose a database: the restore imports into a scratch database of its own instead.
CHOOSE_DATABASE = re.compile(rb"(USE `[^`]+`|CREATE DATABASE .*);\s*$")


class BackupError(StackError):
    """A backup or restore cannot go on; the message says what is wrong."""


def backup_name(when: datetime, version: str) -> str:
    """myauth-20261203T140000Z-allianceauth-5.5.0.sql.gz for that UTC time and version."""
    if not re.fullmatch(r"[0-9A-Za-z.+-]+", version):
        raise BackupError(f"the Alliance Auth version {version!r} is not a version number")
    return f"myauth-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-allianceauth-{version}{SUFFIX}"


def checksum_line(digest: str, name: str) -> str:
    """The .sha256 file's content, in sha256sum's format."""
    return f"{digest}  {name}\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_backups(directory: Path) -> list:
    """[(name, size in bytes, has a .sha256)] of the backups in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.fullmatch(p.name)]
    return [(p.name, p.stat().st_size, p.with_name(p.name + ".sha256").exists())
            for p in sorted(found, key=lambda p: NAME.fullmatch(p.name)["time"])]


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


def dump_lines(path: Path):
    """The dump's lines (bytes), decompressed if it is gzip; gzip damage is a BackupError."""
    try:
        with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as file:
            yield from file
    except EOFError:
        raise BackupError(f"{path} is truncated: its gzip stream ends before its end marker") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise BackupError(f"{path} is corrupt: gzip cannot read it ({error})") from None


def verify(path: Path) -> dict:
    """Every check of the file alone that it must pass before a restore touches anything; raise
    BackupError naming the first that fails. Returns what it found: {"tables": [...],
    "compressed": bool, "migrations": {(app, name) applied}}."""
    if not path.is_file():
        raise BackupError(f"{path} does not exist or is not a file")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        expected = (sidecar.read_text().split() or [""])[0]
        actual = sha256_of(path)
        if expected != actual:
            raise BackupError(f"{path} does not match its checksum in {sidecar.name} (sha256 {actual}, "
                              f"expected {expected or 'nothing'}): the file is damaged or not the one backed up")
    tables, databases, first, last, migrations = [], 0, None, b"", set()
    for line in dump_lines(path):
        if first is None and line.strip() and not line.startswith(b"/*M!999999"):  # MariaDB 11's sandbox line
            first = line
        if line.startswith(b"CREATE TABLE"):
            tables += CREATE_TABLE.findall(line)
        elif line.startswith(b"INSERT INTO `django_migrations`"):
            migrations.update((app.decode(), name.decode()) for app, name in MIGRATION_ROW.findall(line))
        elif line.startswith(b"USE `"):
            databases += 1
        if line.strip():
            last = line
    if first is None or not DUMP_HEADER.match(first):
        raise BackupError(f"{path} is not a mariadb-dump file: it does not begin with a '-- MariaDB dump' "
                          "(or '-- MySQL dump') header")
    if not last.startswith(DUMP_TRAILER):
        raise BackupError(f"{path} is truncated or incomplete: it does not end with mariadb-dump's "
                          "'-- Dump completed' line")
    if databases > 1:
        raise BackupError(f"{path} holds {databases} databases; dump only the Alliance Auth one "
                          "(mariadb-dump DATABASE, not --all-databases)")
    missing = [t for t in REQUIRED_TABLES if t.encode() not in tables]
    if missing:
        raise BackupError(f"{path} is not a dump of an Alliance Auth database: it has no table "
                          f"{', '.join(missing)}")
    return {"tables": [t.decode() for t in tables], "compressed": is_gzip(path), "migrations": migrations}


def version_key(version: str):
    """5.5.0 -> (5, 5, 0); None for a version that is not plain numbers (a pre-release)."""
    parts = version.split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else None


def check_version(path: Path, running: str) -> None:
    """Refuse a backup scripts/backup made with a newer Alliance Auth than the stack runs: its
    schema has migrations this release does not know. (Older is fine: migrate brings it up.)"""
    named = NAME.fullmatch(path.name)
    if not named:
        return  # a plain dump from elsewhere: its version is not known
    made, current = version_key(named["version"]), version_key(running)
    if made and current and made > current:
        raise BackupError(f"{path.name} was made with Alliance Auth {named['version']}, newer than this stack's "
                          f"{running}: upgrade the stack to {named['version']} first, then restore")


def check_migrations(path: Path, applied: set, known: set) -> None:
    """Refuse a dump whose database applied migrations, of apps this stack runs, that this stack's
    code neither has nor replaces: a newer release made it, and this one's code would run on a
    schema it does not know. (Apps the stack does not run are not refused: see foreign_apps.)"""
    apps = {app for app, _ in known}
    newer = sorted(f"{app}.{name}" for app, name in applied - known if app in apps)
    if newer:
        raise BackupError(f"{path} is a database of a newer release: this stack's code lacks {len(newer)} of its "
                          f"migrations ({', '.join(newer[:5])}{', ...' if len(newer) > 5 else ''}). Upgrade the "
                          "stack to that release first (README, Upgrading), then restore")


def foreign_apps(applied: set, known: set) -> list:
    """The apps whose migrations the dump's database applied and this stack does not run."""
    return sorted({app for app, _ in applied} - {app for app, _ in known})


def import_stream(path: Path):
    """The dump's lines without the ones that choose a database (USE, CREATE DATABASE), so that
    it loads into whichever database the restore gives it."""
    for line in dump_lines(path):
        if not CHOOSE_DATABASE.match(line):
            yield line


def allianceauth_version(stack: Stack) -> str:
    """The Alliance Auth version the stack's app image carries."""
    image = stack.model()["services"]["web"]["image"]
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
                             image, "-c", "import allianceauth; print(allianceauth.__version__)"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"could not read the Alliance Auth version from the app image:\n{result.stderr}")
    return result.stdout.strip()


def known_migrations(stack: Stack) -> set:
    """{(app, name)} this stack's app image knows (myauth/myauth/known_migrations.py), with the
    stack's apps installed; the build-time settings, so that it needs neither the database nor Redis."""
    result = stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "python3",
                           "--env", "DJANGO_SETTINGS_MODULE=myauth.settings.collectstatic",
                           "migrate", "-m", "myauth.known_migrations")
    return {tuple(pair) for pair in json.loads(result.stdout.strip().splitlines()[-1])}


# --single-transaction: one snapshot, no locks; --quick: row by row, not each table in memory;
# --hex-blob: binary columns survive any client character set; --triggers (the default) keeps
# any trigger with its table. No --routines/--events: Django apps create neither.
DUMP = ("mariadb-dump", "--single-transaction", "--quick", "--hex-blob", "--triggers", "--no-tablespaces")
GZIP_LEVEL = 6  # gzip's own default: most of level 9's size for a fraction of its time


def backup(stack: Stack, directory: Path) -> Path:
    """Dump the running stack's database into `directory` (scripts/backup); return the file.
    The directory, the backup and its checksum are its owner's only: the dump holds password
    hashes, tokens and sessions."""
    stack.require_running("mariadb")
    name = backup_name(now(), allianceauth_version(stack))
    umask = os.umask(0o077)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = _dump(stack, directory, name)
        (directory / f"{name}.sha256").write_text(checksum_line(sha256_of(target), name))
    finally:
        os.umask(umask)
    return target


def _dump(stack: Stack, directory: Path, name: str) -> Path:
    target, partial = directory / name, directory / f".{name}.partial"
    try:
        with open(partial, "xb") as file:
            with gzip.GzipFile(filename=name[:-3], mode="wb", fileobj=file, compresslevel=GZIP_LEVEL) as out, \
                    subprocess.Popen(stack.mariadb_command(*DUMP, stack.database), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) as dump:
                for block in iter(lambda: dump.stdout.read(1 << 20), b""):
                    out.write(block)
                error = dump.stderr.read().decode(errors="replace")
            file.flush()
            os.fsync(file.fileno())
        if dump.returncode != 0:
            raise BackupError(f"mariadb-dump failed (exit {dump.returncode}):\n{error}")
        verify(partial)  # a dump that stopped early has no end marker
        if target.exists():
            raise BackupError(f"{target} exists already")
        os.rename(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def now() -> datetime:
    return datetime.now(timezone.utc)


def command(name: str, usage: str, arguments: list, action, default: Path | None = None) -> int:
    """The main of backup, restore and upgrade: one backup path (default, when there is one),
    action(stack, path) timed, returning what to say when it is done; a StackError is printed
    as the command's refusal with exit status 1."""
    if arguments[:1] in (["-h"], ["--help"]) or len(arguments) > 1 or not (arguments or default):
        print(usage, file=sys.stderr)
        return 2
    began = time.monotonic()
    try:
        done = action(Stack(), Path(arguments[0]) if arguments else default)
    except StackError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    print(f"{name}: {done}, {time.monotonic() - began:.1f} s in all", flush=True)
    return 0
