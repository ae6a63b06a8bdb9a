"""The stack's configuration variables, in one table, and how the app reads them.

Every variable an operator sets in `.env` or compose.yaml and the overlays set in the
containers is here, with how it is checked. Standard library only, and outside the Django
project's package, so that the host's tools (stackctl: writing and checking `.env`, the sizing
rules) import the same table. In the containers the Django settings, gunicorn and Celery read
through read(), and the entrypoint validates the container's environment before anything starts:

    python3 environment.py check            validate this process's environment
    python3 environment.py true NAME        exit 0 when the boolean variable NAME is true
"""

import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import urlparse


class ConfigurationError(Exception):
    """One or more variables are missing or malformed; the message names each of them."""


def _secret(value: str) -> str:
    # Secrets end up in URLs (redis://:pw@...) and SQL literals: a safe alphabet avoids quoting.
    if len(value) < 32:
        raise ValueError(f"must be at least 32 characters (got {len(value)})")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", value):
        raise ValueError("may contain only letters, digits, '_' and '-'")
    if len(set(value)) < 16:
        raise ValueError("looks like a placeholder (fewer than 16 different characters): generate one")
    return value


def _site_url(value: str) -> str:
    url = urlparse(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("must be an http(s) URL such as https://auth.example.com")
    if url.path not in ("",) or value.endswith("/"):
        raise ValueError("must have no path and no trailing slash")
    return value


def _identifier(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", value):
        raise ValueError("must be a letter followed by up to 31 letters, digits or '_'")
    return value


def _image_tag(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError("must be a Docker image tag: letters, digits, '_', '.' or '-', at most 128, not starting with '.' or '-'")
    return value


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(value)

    return parse


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError("must be true or false")


def _email(value: str) -> str:
    if value and not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        raise ValueError("must be an e-mail address (or empty)")
    return value


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1") from None
    return value


def _memory_size(value: str) -> int:
    """'512MB' -> bytes; the units supervisor's memmon understands (KB, MB, GB)."""
    match = re.fullmatch(r"([0-9]+)(KB|MB|GB)", value)
    if not match or int(match[1]) == 0:
        raise ValueError("must be a size such as 512MB (units KB, MB or GB)")
    return int(match[1]) * {"KB": 1024, "MB": 1024**2, "GB": 1024**3}[match[2]]


def _compose_files(value: str) -> str:
    files = value.split(":")
    if files[0] != "compose.yaml" or len(files) < 2 or not all(f.endswith((".yaml", ".yml")) for f in files):
        raise ValueError("must be compose.yaml followed by an overlay, e.g. compose.yaml:config/overlays/small.yaml")
    return value


def _profiles(value: str) -> str:
    unknown = set(filter(None, value.split(","))) - {"cpu", "monitoring", "loadtest"}
    if unknown:
        raise ValueError(f"may list only the profiles cpu, monitoring and loadtest (unknown: {', '.join(sorted(unknown))})")
    return value


def _text(value: str) -> str:
    return value


@dataclass(frozen=True)
class Variable:
    name: str
    parse: Callable[[str], object]
    help: str
    default: str | None = None  # None: required
    generate: bool = False  # a fresh random secret is written into each new .env
    in_env_file: bool = True  # False: set by compose.yaml / the overlays, not by the operator
    in_app: bool = True  # False: for compose or another image only, never passed to the app containers
    secret: bool = False  # on Docker Swarm a secret, never an environment variable (generated ones are too)

    @property
    def is_secret(self) -> bool:
        return self.secret or self.generate


VARIABLES = [
    # What runs: the overlay for the host size, and optional services.
    Variable("COMPOSE_FILE", _compose_files, "compose.yaml plus the overlay for your host: small, medium or large", "compose.yaml:config/overlays/small.yaml", in_app=False),
    Variable("COMPOSE_PROFILES", _profiles, "cpu: also run worker-cpu, the prefork worker for CPU-bound tasks; monitoring: Prometheus with the alert rules (comma-separated)", "", in_app=False),
    Variable("IMAGE_TAG", _image_tag, "tag of the images scripts/build makes and compose runs (myauth-app, -redis, -mariadb)", "latest", in_app=False),
    # Secrets: generated per install, never a default.
    Variable("SECRET_KEY", _secret, "Django's secret key", generate=True),
    Variable("MARIADB_ROOT_PASSWORD", _secret, "MariaDB root password", generate=True, in_app=False),
    Variable("MARIADB_PASSWORD", _secret, "password of the application's MariaDB user", generate=True),
    Variable("REDIS_PASSWORD", _secret, "Redis password (broker, cache, QueueOnce locks)", generate=True),
    # The site.
    Variable("SITE_URL", _site_url, "public URL of the site, no trailing slash", "http://localhost:8000"),
    Variable("SITE_NAME", _text, "name shown in page titles", "Alliance Auth"),
    Variable("WEB_BIND_ADDRESS", _ip_address, "host address the web port is published on", "127.0.0.1", in_app=False),
    Variable("WEB_PORT", _integer(1, 65535), "host port of the web app", "8000", in_app=False),
    Variable("METRICS_PORT", _integer(1, 65535), "host port of the metrics exporter (Prometheus text at /metrics, on 127.0.0.1 only)", "9808", in_app=False),
    Variable("MARIADB_DATABASE", _identifier, "database name", "alliance_auth"),
    Variable("MARIADB_USER", _identifier, "application's database user", "allianceauth"),
    # EVE Online SSO (https://developers.eveonline.com); empty until you register an application.
    Variable("ESI_SSO_CLIENT_ID", _text, "EVE SSO client id", ""),
    Variable("ESI_SSO_CLIENT_SECRET", _text, "EVE SSO client secret", "", secret=True),
    Variable("ESI_USER_CONTACT_EMAIL", _email, "contact CCP can reach (empty: admin@<site host>)", ""),
    # Behaviour switches.
    Variable("SCHEDULE_OUTBOUND_TASKS", _boolean, "false: beat skips Alliance Auth's periodic tasks that call out (ESI, GitLab, analytics)", "true"),
    Variable("DIAGNOSTICS_ENABLED", _boolean, "true: install the diagnostics tasks the tests and the load test use", "false"),
    # Outgoing e-mail.
    Variable("EMAIL_HOST", _text, "SMTP server (empty: no e-mail is sent)", ""),
    Variable("EMAIL_PORT", _integer(1, 65535), "SMTP port", "587"),
    Variable("EMAIL_HOST_USER", _text, "SMTP user", ""),
    Variable("EMAIL_HOST_PASSWORD", _text, "SMTP password", "", secret=True),
    Variable("EMAIL_USE_TLS", _boolean, "use STARTTLS", "true"),
    Variable("DEFAULT_FROM_EMAIL", _email, "sender address, e.g. noreply@example.com", ""),
    # Sizes: compose.yaml and the overlays set these in the containers.
    Variable("GUNICORN_WORKERS", _integer(1, 64), "gunicorn worker processes", in_env_file=False),
    Variable("WORKER_PROGRAMS", _integer(1, 32), "gevent worker programs (supervisord numprocs)", in_env_file=False),
    Variable("WORKER_CONCURRENCY", _integer(1, 1000), "greenlets per gevent worker program", in_env_file=False),
    Variable("WORKER_MEMORY_LIMIT", _memory_size, "memmon restarts a gevent worker process above this RSS", in_env_file=False),
    Variable("SERVICES_WORKER_MEMORY_LIMIT", _memory_size, "memmon restarts the services worker above this RSS", in_env_file=False),
    Variable("WORKER_STOP_WAIT_SECONDS", _integer(1, 86400), "supervisord stopwaitsecs: warm shutdown allowance", in_env_file=False),
    Variable("MEMMON_TICK", _one_of("5", "60", "3600"), "seconds between memmon's checks (supervisord's TICK events)", in_env_file=False),
    Variable("PREFORK_CONCURRENCY", _integer(1, 256), "processes of the prefork worker (worker-cpu)", in_env_file=False),
    Variable("PREFORK_MAX_MEMORY_PER_CHILD", _integer(1024, 64 * 1024**2), "KiB; a prefork child past it is replaced after its task", in_env_file=False),
    Variable("PREFORK_MAX_TASKS_PER_CHILD", _integer(1, 1_000_000), "tasks a prefork child runs before it is replaced", in_env_file=False),
    Variable("TASK_TIME_LIMIT", _integer(1, 86400), "hard time limit of a task, seconds", in_env_file=False),
    Variable("WAIT_FOR_SCHEMA", _boolean, "true: wait until every migration is applied before starting (Docker Swarm has no depends_on)", "false", in_env_file=False),
    Variable("BROKER_VISIBILITY_TIMEOUT", _integer(1, 7 * 86400), "seconds after which Redis re-queues a task taken by a worker that never acknowledged it", in_env_file=False),
]
BY_NAME = {variable.name: variable for variable in VARIABLES}

# Not a variable, but a size the worker and the sizing rules share: the gevent worker's database
# pool holds a connection per greenlet and this many more (myauth/myauth/database.py).
DATABASE_POOL_OVERFLOW = 1


def validate(values: Mapping[str, str], names) -> dict:
    """Parse `names` from `values`; raise ConfigurationError naming every bad variable."""
    parsed, problems = {}, []
    for name in names:
        variable = BY_NAME[name]
        raw = values.get(name)
        if raw in (None, "") and variable.default is None:
            problems.append(f"{name} is missing ({variable.help}).")
            continue
        try:
            parsed[name] = variable.parse(variable.default if raw in (None, "") else raw)
        except ValueError as error:
            problems.append(f"{name}={raw!r} is not valid: {name} {error}.")
    if problems:
        raise ConfigurationError("\n".join(problems))
    return parsed


def read(name: str):
    """One variable from this process's environment, parsed; used by the Django settings."""
    return validate(os.environ, [name])[name]


def main(argv) -> int:
    try:
        if argv == ["check"]:
            validate(os.environ, [name for name in BY_NAME if name in os.environ])
            return 0
        if len(argv) == 2 and argv[0] == "true" and argv[1] in BY_NAME:
            return 0 if read(argv[1]) is True else 1
    except ConfigurationError as error:
        print(f"Configuration error:\n{error}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
