"""Prove that the sizes of a stack agree with each other, before anything starts.

    scripts/check-sizing [--worker-replicas N] [--worker-hosts H] [--env-file FILE] [-f compose.yaml ...]
    scripts/check-sizing --rules      print the rules, with their numbers (README.md lists them)

Reads the merged compose model exactly as `docker compose` would run it (COMPOSE_FILE from the
env file, or the -f files given, including an operator's own override files), with the
optional worker-cpu and prometheus counted, and checks it against rules(), for N replicas of
the worker service spread over H worker hosts of the overlay's size (Docker Swarm; compose runs
one on one host). Each violation is printed with the numbers involved; the exit status is 1 if
there is any.
"""

import json
import re
import subprocess
import sys
from dataclasses import dataclass

import environment

from stackctl.stack import ROOT

MiB = 1024**2
# Every service that runs all the time (the integration tests check each is healthy and hardened).
LONG_RUNNING = ("redis", "mariadb", "web", "worker", "worker-cpu", "beat", "metrics", "prometheus")
# Measured RSS at idle: supervisord 26 MiB + memmon 25 MiB, rounded up.
SUPERVISION_MEMORY = 64 * MiB
# A prefork worker's parent process (Django and Celery loaded, ~120 MiB), rounded up.
PREFORK_PARENT_MEMORY = 128 * MiB
# What the host keeps for its kernel, Docker and page cache.
HOST_HEADROOM_SHARE, HOST_HEADROOM_MIN = 0.10, 512 * MiB
# Connections beyond the services' own: migrate, manage.py shells, health checks, an admin.
DB_CONNECTION_HEADROOM = 10
# Redis clients one Django/Celery process can hold at once: kombu's broker pool (10), the lease's
# acknowledgement pool (lease.ACK_CONNECTIONS, 10) and its renewal thread's (2), the Django
# cache's pool (50, settings/local.py) and an idle worker's keyspace-event subscription (1).
REDIS_CLIENTS_PER_PROCESS = 10 + 10 + 2 + 50 + 1
# Redis's own default; config/redis/redis.conf may set another.
REDIS_DEFAULT_MAXCLIENTS = 10000
# Redis forks to rewrite its AOF; copy-on-write and fragmentation need room beyond maxmemory.
REDIS_MAXMEMORY_SHARE = 0.75
# InnoDB's buffer pool is most, not all, of MariaDB's memory (connections, sort buffers).
BUFFER_POOL_SHARE = 0.75


def size(text: str) -> int:
    """'4g', '192mb', '256M', '805306368' -> bytes (1024-based, as Redis, MariaDB and Docker read them)."""
    match = re.fullmatch(r"([0-9]+)\s*([kmg]?)b?", str(text).strip().lower())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def seconds(duration: str) -> float:
    """Compose's Go-style durations ('6m0s', '1h', '330s') -> seconds."""
    parts = re.findall(r"([0-9.]+)(h|ms|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def mib(number: float) -> str:
    return f"{number / MiB:.0f} MiB"


def redis_maxclients() -> int:
    for line in (ROOT / "config" / "redis" / "redis.conf").read_text().splitlines():
        if line.split()[:1] == ["maxclients"]:
            return int(line.split()[1])
    return REDIS_DEFAULT_MAXCLIENTS


@dataclass
class Sizes:
    """The merged compose model of a stack, read the way the rules need it, and how many worker
    replicas run on how many worker hosts (Docker Swarm; compose runs one on one host)."""

    model: dict
    worker_replicas: int = 1
    worker_hosts: int = 1

    @property
    def services(self) -> dict:
        return self.model["services"]

    def env(self, service: str, name: str):
        return environment.validate(self.services[service].get("environment") or {}, [name])[name]

    def memory_limit(self, service: str):
        limit = ((self.services[service].get("deploy") or {}).get("resources") or {}).get("limits") or {}
        return size(limit["memory"]) if limit.get("memory") else None

    @property
    def long_running(self) -> list:
        return [s for s in LONG_RUNNING if s in self.services]

    @property
    def host_memory(self) -> int:
        return size(self.model["x-host"]["memory"])

    @property
    def usable_memory(self) -> int:
        return self.host_memory - max(self.host_memory * HOST_HEADROOM_SHARE, HOST_HEADROOM_MIN)

    @property
    def prefork_slots(self) -> int:
        return self.env("worker-cpu", "PREFORK_CONCURRENCY") if "worker-cpu" in self.services else 0


RULES = []  # (what it demands, in words with its numbers; the check), in the order README.md lists them


def rule(text: str):
    def register(check):
        RULES.append((text, check))
        return check
    return register


@rule(f"the memory limits of all long-running services fit the host, less {HOST_HEADROOM_SHARE:.0%} "
      f"(at least {mib(HOST_HEADROOM_MIN)}) for the kernel and Docker;")
def services_fit_the_host(sizes: Sizes) -> list:
    total = sum(sizes.memory_limit(s) for s in sizes.long_running)
    if total <= sizes.usable_memory:
        return []
    parts = " + ".join(f"{s} {mib(sizes.memory_limit(s))}" for s in sizes.long_running)
    return [f"memory limits {parts} = {mib(total)} exceed the {mib(sizes.usable_memory)} a {mib(sizes.host_memory)} "
            f"host can give after its headroom ({HOST_HEADROOM_SHARE:.0%}, at least {mib(HOST_HEADROOM_MIN)})"]


@rule(f"memmon's limit times the gevent programs, plus the services worker's limit, plus "
      f"{mib(SUPERVISION_MEMORY)} for supervisord and memmon, fits the worker container: memmon "
      f"restarts a worker before the kernel OOM-kills the container; prefork children times their "
      f"limit, plus {mib(PREFORK_PARENT_MEMORY)} for the parent, fits worker-cpu;")
def memmon_restarts_before_the_kernel_kills(sizes: Sizes) -> list:
    problems = []
    programs = sizes.env("worker", "WORKER_PROGRAMS")
    per_program = sizes.env("worker", "WORKER_MEMORY_LIMIT")
    services_worker = sizes.env("worker", "SERVICES_WORKER_MEMORY_LIMIT")
    needed = programs * per_program + services_worker + SUPERVISION_MEMORY
    if needed > sizes.memory_limit("worker"):
        problems.append(
            f"worker: memmon lets {programs} gevent process(es) reach {mib(per_program)} each, the services "
            f"worker {mib(services_worker)}, plus {mib(SUPERVISION_MEMORY)} for supervisord and memmon = "
            f"{mib(needed)}, above the container's limit of {mib(sizes.memory_limit('worker'))}: the kernel would "
            f"OOM-kill the container before memmon restarts a worker"
        )
    if "worker-cpu" in sizes.services:
        child = sizes.env("worker-cpu", "PREFORK_MAX_MEMORY_PER_CHILD") * 1024
        needed = sizes.prefork_slots * child + PREFORK_PARENT_MEMORY
        if needed > sizes.memory_limit("worker-cpu"):
            problems.append(
                f"worker-cpu: {sizes.prefork_slots} prefork children of up to {mib(child)} "
                f"(PREFORK_MAX_MEMORY_PER_CHILD) plus {mib(PREFORK_PARENT_MEMORY)} for the parent = "
                f"{mib(needed)}, above the container's limit of {mib(sizes.memory_limit('worker-cpu'))}"
            )
    return problems


@rule("each worker host holds its share of the worker replicas (Docker Swarm);")
def worker_hosts_hold_their_replicas(sizes: Sizes) -> list:
    per_host = -(-sizes.worker_replicas // sizes.worker_hosts)
    worker = sizes.memory_limit("worker")
    if per_host * worker <= sizes.usable_memory:
        return []
    return [f"worker: {sizes.worker_replicas} replicas on {sizes.worker_hosts} worker host(s) put {per_host} on one "
            f"host: {per_host} x {mib(worker)} = {mib(per_host * worker)} exceed the {mib(sizes.usable_memory)} a "
            f"{mib(sizes.host_memory)} host can give: add worker hosts or use fewer replicas"]


@rule("the broker's visibility timeout outlasts the task hard time limit, or kombu would hand a task "
      "that a worker of an older release still runs (during an upgrade) to a second worker;")
def visibility_timeout_outlasts_the_time_limit(sizes: Sizes) -> list:
    visibility, time_limit = sizes.env("worker", "BROKER_VISIBILITY_TIMEOUT"), sizes.env("worker", "TASK_TIME_LIMIT")
    if visibility > time_limit:
        return []
    return [f"worker: BROKER_VISIBILITY_TIMEOUT {visibility} s must exceed TASK_TIME_LIMIT {time_limit} s, "
            f"or kombu hands a task an older worker still runs to a second worker"]


@rule(f"MariaDB's `max_connections` covers gunicorn workers + each gevent program's connection pool "
      f"(a connection per greenlet, plus {environment.DATABASE_POOL_OVERFLOW}) + the services worker + prefork "
      f"processes + beat + {DB_CONNECTION_HEADROOM}, every worker replica's counted (each slot running "
      f"Django code holds a connection), and Redis `maxclients` every client ({REDIS_CLIENTS_PER_PROCESS} "
      f"a Django or Celery process);")
def connections_fit_mariadb_and_redis(sizes: Sizes) -> list:
    problems = []
    replicas = sizes.worker_replicas
    programs = sizes.env("worker", "WORKER_PROGRAMS")
    # Every slot that can run Django code at once holds its own database connection; a gevent
    # program's pool holds one per greenlet and DATABASE_POOL_OVERFLOW more (myauth/myauth/database.py).
    gunicorn = sizes.env("web", "GUNICORN_WORKERS")
    pool = sizes.env("worker", "WORKER_CONCURRENCY") + environment.DATABASE_POOL_OVERFLOW
    per_replica = programs * pool + 1
    needed = gunicorn + replicas * per_replica + sizes.prefork_slots + 1 + DB_CONNECTION_HEADROOM
    max_connections = int(sizes.services["mariadb"]["environment"]["MARIADB_MAX_CONNECTIONS"])
    if needed > max_connections:
        workers = f"gevent pools {programs}x{pool} + services worker 1"
        if replicas > 1:
            workers = f"{replicas} worker replicas x ({workers})"
        problems.append(
            f"mariadb: MARIADB_MAX_CONNECTIONS={max_connections} is below the {needed} connections the "
            f"stack can open: gunicorn {gunicorn} + {workers} + prefork {sizes.prefork_slots} + beat 1 "
            f"+ headroom {DB_CONNECTION_HEADROOM}"
        )
    # Processes holding Redis clients: gunicorn's, each worker replica's Celery programs (and its
    # supervisord metrics listener, 1 client), the prefork parent and children, beat; the exporter 1.
    processes = gunicorn + replicas * (programs + 1) + sizes.prefork_slots + 1 + 1
    clients = processes * REDIS_CLIENTS_PER_PROCESS + replicas + 1
    if clients > redis_maxclients():
        problems.append(
            f"redis: maxclients {redis_maxclients()} is below the {clients} clients the stack can open: "
            f"{processes} processes x {REDIS_CLIENTS_PER_PROCESS} ({replicas} worker replica(s) of "
            f"{programs + 1} processes each) + {replicas + 1} for the metrics listeners and exporter"
        )
    return problems


@rule(f"Redis `maxmemory` is at most {REDIS_MAXMEMORY_SHARE:.0%} of its container (an AOF rewrite "
      f"forks), the InnoDB buffer pool at most {BUFFER_POOL_SHARE:.0%} of MariaDB's;")
def caches_leave_their_container_room(sizes: Sizes) -> list:
    problems = []
    buffer_pool = size(sizes.services["mariadb"]["environment"]["MARIADB_INNODB_BUFFER_POOL_SIZE"])
    if buffer_pool > BUFFER_POOL_SHARE * sizes.memory_limit("mariadb"):
        problems.append(
            f"mariadb: innodb_buffer_pool_size {mib(buffer_pool)} is above {BUFFER_POOL_SHARE:.0%} of the "
            f"container's limit of {mib(sizes.memory_limit('mariadb'))}"
        )
    maxmemory = size(sizes.services["redis"]["environment"]["REDIS_MAXMEMORY"])
    if maxmemory > REDIS_MAXMEMORY_SHARE * sizes.memory_limit("redis"):
        problems.append(
            f"redis: REDIS_MAXMEMORY {mib(maxmemory)} is above {REDIS_MAXMEMORY_SHARE:.0%} of the container's "
            f"limit of {mib(sizes.memory_limit('redis'))} (an AOF rewrite forks and needs the rest)"
        )
    return problems


@rule("docker `stop_grace_period` > supervisord `stopwaitsecs` >= the task hard time limit, and "
      "worker-cpu's `stop_grace_period` > the task hard time limit.")
def shutdown_waits_for_running_tasks(sizes: Sizes) -> list:
    problems = []
    time_limit = sizes.env("worker", "TASK_TIME_LIMIT")
    stop_wait = sizes.env("worker", "WORKER_STOP_WAIT_SECONDS")
    grace = seconds(sizes.services["worker"].get("stop_grace_period", "10s"))
    if not stop_wait < grace:
        problems.append(
            f"worker: supervisord stopwaitsecs {stop_wait} s must be below docker's stop_grace_period "
            f"{grace:.0f} s, or docker SIGKILLs supervisord in the middle of a warm shutdown"
        )
    if not stop_wait >= time_limit:
        problems.append(
            f"worker: supervisord stopwaitsecs {stop_wait} s must be at least TASK_TIME_LIMIT {time_limit} s, "
            f"or supervisord SIGKILLs a worker whose task is still allowed to run"
        )
    if "worker-cpu" in sizes.services:
        grace = seconds(sizes.services["worker-cpu"].get("stop_grace_period", "10s"))
        cpu_limit = sizes.env("worker-cpu", "TASK_TIME_LIMIT")
        if not grace > cpu_limit:
            problems.append(
                f"worker-cpu: stop_grace_period {grace:.0f} s must exceed TASK_TIME_LIMIT "
                f"{cpu_limit} s, or docker SIGKILLs running tasks"
            )
    return problems


def rules() -> list:
    """What violations() checks, in words, with the numbers above; README.md ("Sizing") quotes them."""
    return [text for text, _ in RULES]


def violations(model: dict, worker_replicas: int = 1, worker_hosts: int = 1) -> list:
    """Every sizing rule the merged compose model breaks, each with its numbers."""
    sizes = Sizes(model, worker_replicas, worker_hosts)
    unlimited = [s for s in sizes.long_running if sizes.memory_limit(s) is None]
    problems = [f"no memory limit (deploy.resources.limits.memory) for: {', '.join(unlimited)}"] if unlimited else []
    if "x-host" not in model:
        problems.append("no host size (x-host): COMPOSE_FILE must include an overlay from config/overlays/")
    if problems:
        return problems
    return [problem for _, check in RULES for problem in check(sizes)]


def compose_model(arguments: list) -> dict:
    command = ["docker", "compose", *arguments, "--profile", "cpu", "--profile", "monitoring", "config", "--format", "json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"check-sizing: docker compose could not read the configuration:\n{result.stderr}")
    return json.loads(result.stdout)


def main(arguments: list) -> int:
    if {"-h", "--help"} & set(arguments):
        print(__doc__)
        return 0
    if arguments == ["--rules"]:
        print(*(f"- {text}" for text in rules()), sep="\n")
        return 0
    counts = {"--worker-replicas": 1, "--worker-hosts": 1}
    while arguments[:1] and arguments[0] in counts:
        if len(arguments) < 2 or not arguments[1].isdigit() or int(arguments[1]) < 1:
            raise SystemExit(f"check-sizing: {arguments[0]} takes a whole number of at least 1")
        counts[arguments[0]], arguments = int(arguments[1]), arguments[2:]
    try:
        problems = violations(compose_model(arguments), counts["--worker-replicas"], counts["--worker-hosts"])
    except environment.ConfigurationError as error:
        problems = [str(error)]
    if problems:
        print("Sizing check failed:", *(f"- {p}" for p in problems), sep="\n", file=sys.stderr)
        return 1
    print("check-sizing: the stack's sizes agree")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
