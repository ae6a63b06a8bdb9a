"""The one driver of a running stack: the compose project of an env file, and what the host does
to it (compose commands, a command in a service's container, redis-cli, MariaDB, the diagnostics
app, the build). The operator's scripts, the integration tests and the load test all use it.
"""

import json
import os
import subprocess
from pathlib import Path

import environment
from monitoring.keys import PRIORITIES, bucket_key

from stackctl import envfile

ROOT = Path(__file__).resolve().parent.parent
SUPERVISORCTL = ("supervisorctl", "-c", "/etc/supervisor/supervisord.conf")


class StackError(Exception):
    """A command the stack was given failed; the message says which and what it printed."""


class Stack:
    """The compose project of `env_file` (default: $ENV_FILE, else .env in this checkout)."""

    def __init__(self, env_file=None):
        self.env_file = Path(env_file or os.environ.get("ENV_FILE") or ROOT / ".env")
        if not self.env_file.is_file():
            raise StackError(f"{self.env_file} does not exist: run scripts/up first, it writes it")
        self.env = envfile.read_env_file(str(self.env_file))

    def value(self, name: str):
        """A variable of the env file, parsed (its default when the file does not set it)."""
        return environment.validate(self.env, [name])[name]

    @property
    def database(self) -> str:
        return self.value("MARIADB_DATABASE")

    # Compose.

    def command(self, *args: str) -> list:
        return ["docker", "compose", "--env-file", str(self.env_file), *args]

    def compose(self, *args: str, check: bool = True, **options) -> subprocess.CompletedProcess:
        options.setdefault("capture_output", True)
        options.setdefault("text", True)
        result = subprocess.run(self.command(*args), cwd=ROOT, **options)
        if check and result.returncode != 0:
            raise StackError(f"docker compose {' '.join(args[:4])} failed (exit {result.returncode}):\n"
                             f"{result.stdout or ''}\n{result.stderr or ''}".rstrip())
        return result

    def model(self, *profiles: str) -> dict:
        """The merged compose model (`docker compose config`), with these profiles' services too."""
        flags = [flag for profile in profiles for flag in ("--profile", profile)]
        return json.loads(self.compose(*flags, "config", "--format", "json").stdout)

    def ps(self, *options: str) -> list:
        """`docker compose ps` of the project, a dict per container (Service, ID, State, Health, ...)."""
        text = self.compose("ps", *options, "--format", "json").stdout.strip()
        # Compose prints one JSON object per line (older releases: one JSON array).
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]

    def running(self) -> set:
        """The services that have a running container."""
        return set(self.compose("ps", "--services", "--status", "running").stdout.split())

    def require_running(self, service: str) -> None:
        if service not in self.running():
            raise StackError(f"{service} is not running: start the stack first (scripts/up)")

    def container(self, service: str) -> str:
        """The id of the service's container, also of a stopped one ("" if there is none)."""
        return self.compose("ps", "--all", "--quiet", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        """`docker inspect` of the service's container."""
        result = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True, text=True,
                                check=True)
        return json.loads(result.stdout)[0]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout

    def build(self, **settings: str) -> None:
        """scripts/build for this env file (the base image, the wheelhouse, `docker compose build`)."""
        subprocess.run([ROOT / "scripts" / "build"], env={**os.environ, "ENV_FILE": str(self.env_file), **settings},
                       check=True)

    # Inside the containers.

    def exec_command(self, service: str, *command: str, **variables: str) -> list:
        flags = [flag for name, value in variables.items() for flag in ("-e", f"{name}={value}")]
        return self.command("exec", "-T", *flags, service, *command)

    def exec(self, service: str, *command: str, input: str = None, check: bool = True, **variables: str) -> str:
        """A command in the service's running container, with these variables; its output.
        With check, StackError (with what it printed) if it fails. Everything below that runs in a
        container goes through here."""
        result = subprocess.run(self.exec_command(service, *command, **variables), cwd=ROOT, input=input or "",
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise StackError(f"{' '.join(command)[:200]} in {service} exited {result.returncode}:\n"
                             f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}")
        return result.stdout

    def redis(self, *command: str) -> str:
        return self.exec("redis", "redis-cli", "--raw", *command)

    def queue_lengths(self, queue: str = "celery") -> dict:
        """Messages waiting per priority bucket (0 is kombu's unsuffixed key)."""
        return {p: int(self.redis("llen", bucket_key(queue, p))) for p in PRIORITIES}

    def supervisor(self, *args: str) -> str:
        """supervisorctl in the worker container (its exit status says little: not checked)."""
        return self.exec("worker", *SUPERVISORCTL, *args, check=False)

    def diagnostics(self, action: str, service: str = "web", **arguments):
        """An action of the diagnostics app (myauth/diagnostics/actions.py) in a container that has
        it (DIAGNOSTICS_ENABLED=true); its result."""
        output = self.exec(service, "python3", "manage.py", "diagnostics", action, input=json.dumps(arguments))
        return json.loads(output.strip().splitlines()[-1])

    def diagnostics_in_background(self, action: str, service: str = "web", **arguments) -> subprocess.Popen:
        """The same, started: its result is the last line of what the process prints."""
        command = self.exec_command(service, "python3", "manage.py", "diagnostics", action,
                                    "--arguments", json.dumps(arguments))
        return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)

    def celery_stats(self, service: str = "worker") -> dict:
        """`celery inspect stats` in a service's container: {node: stats}, {} when no node answered."""
        result = self.compose("exec", "-T", service, "celery", "-A", "myauth", "inspect", "stats", "--json",
                              "--timeout", "10", check=False)
        return json.loads(result.stdout) if result.stdout.strip() else {}

    # MariaDB.

    def mariadb_command(self, *command: str, user: str = "app") -> list:
        """A MariaDB client program in the mariadb container, as the app user (over TCP, as the
        app connects) or as root (on the local socket; root cannot log in over the network).
        The password stays inside the container: the shell there reads it from its environment."""
        login = ('MYSQL_PWD="$MARIADB_PASSWORD" exec "$0" --protocol=tcp --host=127.0.0.1 --user="$MARIADB_USER" "$@"'
                 if user == "app" else 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" exec "$0" --user=root "$@"')
        return self.command("exec", "-T", "mariadb", "sh", "-c", login, *command)

    def sql(self, statements: str, user: str = "root") -> str:
        """Run SQL; return its tab-separated output."""
        result = subprocess.run(self.mariadb_command("mariadb", "--batch", "--skip-column-names", user=user),
                                cwd=ROOT, input=statements, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"MariaDB refused:\n{result.stderr}")
        return result.stdout
