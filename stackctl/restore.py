"""Restore a backup into the running stack, or into a fresh install (after scripts/up).

    scripts/restore FILE     (ENV_FILE: the stack's .env, default .env in this checkout)

FILE is a backup scripts/backup wrote (.sql.gz, checked against the .sha256 beside it when
there is one) or a plain `mariadb-dump`/`mysqldump` file of an Alliance Auth database, gzipped
or not (moving in from another install). In order:

1. verify: checksum, gzip integrity, a complete mariadb-dump of an Alliance Auth database, made
   by no newer an Alliance Auth (or app) than the stack runs: no migration in it that the
   stack's code lacks. A file that fails is refused here, before anything is touched;
2. stop web, worker(s) and beat (queued tasks stay in Redis; running ones finish);
3. import it into a scratch database; if that fails, the live database is untouched and the
   services start again;
4. swap: one atomic RENAME TABLE moves the live tables aside and the restored ones in;
5. clear Django's cache and cached sessions in Redis db 1 (they describe the replaced data;
   QueueOnce locks of queued tasks stay);
6. `docker compose up --wait`: the migrate one-shot brings the schema up to this release, then
   everything starts and is healthy. Only then are the replaced tables dropped.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from stackctl import backups
from stackctl.stack import ROOT, Stack, StackError

# Django's cache keys (django-redis: ":<version>:<key>") except QueueOnce's locks ("qo_...").
CLEAR_CACHE = """
local cursor, cleared = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ":1:*", "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if string.sub(key, 1, 6) ~= ":1:qo_" then redis.call("UNLINK", key); cleared = cleared + 1 end
  end
until cursor == "0"
return cleared
"""


def say(message: str) -> None:
    print(f"restore: {message}", flush=True)


def tables(stack: Stack, database: str) -> list:
    return stack.sql(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{database}' "
                     "ORDER BY table_name").split()


def import_into_scratch(stack: Stack, path: Path, scratch: str) -> None:
    stack.sql(f"DROP DATABASE IF EXISTS `{scratch}`; "
              f"CREATE DATABASE `{scratch}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;")
    command = stack.mariadb_command("mariadb", f"--database={scratch}", "--max-allowed-packet=1G", user="root")
    with subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        try:
            for line in backups.import_stream(path):
                client.stdin.write(line)
            client.stdin.close()
        except BrokenPipeError:
            pass  # the client stopped: its error is on stderr
        error = client.stderr.read().decode(errors="replace")
    if client.returncode != 0:
        stack.sql(f"DROP DATABASE IF EXISTS `{scratch}`;")
        raise backups.BackupError(f"the import failed, the live database is unchanged:\n{error.strip()}")


def swap(stack: Stack, scratch: str, previous: str) -> None:
    """Live tables to `previous`, scratch tables to live, in one RENAME TABLE: all or nothing."""
    live, restored = tables(stack, stack.database), tables(stack, scratch)
    renames = [f"`{stack.database}`.`{t}` TO `{previous}`.`{t}`" for t in live]
    renames += [f"`{scratch}`.`{t}` TO `{stack.database}`.`{t}`" for t in restored]
    stack.sql(f"CREATE DATABASE `{previous}`; RENAME TABLE {', '.join(renames)}; DROP DATABASE `{scratch}`;")


def start(stack: Stack):
    """`docker compose up --wait`: the migrate one-shot, then every service, until all are healthy."""
    return stack.compose("up", "--detach", "--wait", check=False)


def restore(stack: Stack, path: Path) -> None:
    try:
        found = backups.verify(path)
        backups.check_version(path, backups.allianceauth_version(stack))
        known = backups.known_migrations(stack)
        backups.check_migrations(path, found["migrations"], known)
    except StackError as error:
        raise backups.BackupError(f"refused, nothing was touched: {error}") from None
    say(f"{path.name} verified: a {'gzipped ' if found['compressed'] else ''}mariadb-dump of "
        f"{len(found['tables'])} tables, of no newer a release than this stack")
    foreign = backups.foreign_apps(found["migrations"], known)
    if foreign:
        say(f"it has the tables of apps this stack does not run, restored but unused: {', '.join(foreign)} "
            "(README, Adding a community app)")
    stack.require_running("mariadb")
    stack.require_running("redis")
    scratch, previous = f"{stack.database}_restoring", f"{stack.database}_replaced"
    if previous in stack.sql("SHOW DATABASES").split():
        raise backups.BackupError(f"the database {previous} exists: it holds the tables an earlier restore replaced "
                                  "and did not finish. Look at them, then drop it: docker compose exec mariadb sh -c "
                                  f"'MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" mariadb -uroot -e \"DROP DATABASE {previous}\"'")
    stopping = sorted(stack.running() & set(backups.APP_SERVICES))
    say(f"stopping {', '.join(stopping) or 'nothing (no app service running)'}")
    if stopping:
        stack.compose("stop", *stopping)
    try:
        say(f"importing into the scratch database {scratch}")
        began = time.monotonic()
        import_into_scratch(stack, path, scratch)
        say(f"imported in {time.monotonic() - began:.0f} s")
    except backups.BackupError as error:
        say("starting the services again on the unchanged database")
        started = start(stack)
        if started.returncode != 0:
            raise backups.BackupError(f"{error}\nThe services did not come up again:\n{started.stderr.strip()}") from None
        raise
    swap(stack, scratch, previous)
    say("restored tables in place")
    cleared = stack.compose("exec", "-T", "redis", "redis-cli", "-n", "1", "EVAL", CLEAR_CACHE, "0").stdout.strip()
    say(f"cleared Django's cache in Redis ({cleared} keys, cached sessions included)")
    say("migrating and starting everything (docker compose up --wait)")
    started = start(stack)
    if started.returncode != 0:
        raise backups.BackupError(f"the restored database is in place, but the stack did not come up:\n"
                                  f"{started.stderr.strip()}\nThe tables it replaced are kept in the database "
                                  f"{previous}; see `docker compose logs migrate`.")
    stack.sql(f"DROP DATABASE `{previous}`;")


def restore_and_report(stack: Stack, path: Path) -> str:
    restore(stack, path)
    return "done, every service is healthy"


def main(arguments: list) -> int:
    os.umask(0o077)
    return backups.command("restore", __doc__, arguments, restore_and_report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
