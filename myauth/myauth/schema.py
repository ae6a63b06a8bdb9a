"""Wait until the database schema is current: every migration the image knows is applied.

Under compose, web, worker and beat start only after the migrate one-shot succeeded
(depends_on). Docker Swarm has no depends_on: there the migrate job and the app services start
together, and an app container with WAIT_FOR_SCHEMA=true runs this first (myauth-entrypoint),
which logs what it waits for every few seconds until the migrate job has applied everything.

    python3 -m myauth.schema COMMAND...     wait, then exec COMMAND
"""

import os
import signal
import sys
import time

CHECK_EVERY_SECONDS = 5


def unapplied() -> list:
    """The migrations `manage.py migrate` would apply now, as 'app.name' (its plan, as --check reads it)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _ in plan]


def wait() -> None:
    from django.db import DatabaseError, close_old_connections

    began = time.monotonic()
    while True:
        try:
            pending = unapplied()
        except DatabaseError as error:
            reason = f"the database does not answer yet ({str(error).splitlines()[0][:120]})"
        else:
            if not pending:
                print(f"schema: every migration is applied; starting (waited {time.monotonic() - began:.0f} s)", flush=True)
                return
            reason = f"{len(pending)} migration(s) not applied yet, the first {pending[0]}; the migrate job applies them"
        close_old_connections()
        print(f"schema: waiting before starting: {reason}", flush=True)
        time.sleep(CHECK_EVERY_SECONDS)


def main(command: list) -> None:
    """Wait, then become `command`. This process is the container's PID 1 meanwhile, which the
    kernel would not let SIGTERM end by default: `docker stop` then waited its whole grace period."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import django

    try:
        django.setup()  # Alliance Auth's apps reach Redis and the database as they load
    except Exception as error:
        print(f"schema: waiting before starting: Django cannot start yet ({type(error).__name__}: "
              f"{str(error).splitlines()[0][:120]})", flush=True)
        time.sleep(CHECK_EVERY_SECONDS)
        # Django sets up once a process: try again in a fresh one.
        os.execv(sys.executable, [sys.executable, "-m", "myauth.schema", *command])
    wait()
    from django.db import connections

    connections.close_all()
    os.execvp(command[0], command)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myauth.settings.local")
    main(sys.argv[1:])
