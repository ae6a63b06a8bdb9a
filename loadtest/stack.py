"""The stack under load: its compose project, the ESI stub, and the worker variants it measures.

Each variant is a one-off container of the stack's `worker` service (`docker compose run`), so
it gets exactly the worker's memory and CPU limits for the overlay, and consumes only the
queue `loadtest`: the stack's own workers never see the load, nor the variants anything else.
"""

import math
import subprocess
import threading
import time
from pathlib import Path

from monitoring.keys import PRIORITIES, bucket_key

from stackctl import stack

ROOT = stack.ROOT
QUEUE = "loadtest"
# What a worker logs when its broker connection fails it, or when a live worker was taken for dead
# (myauth/broker.py, lease.py): none of them may appear.
BROKER_TROUBLE = ("Couldn't ack", "Too many connections", "Connection to broker lost", "Restoring",
                  "lease expired", "had expired")


class Stack(stack.Stack):
    """stackctl's driver, and what the load test needs of the stack besides."""

    def purge(self) -> None:
        """Drop every message still waiting on the load test's queue."""
        self.redis("del", *(bucket_key(QUEUE, p) for p in PRIORITIES))

    def max_connections(self, count: int = 0) -> int:
        """MariaDB's max_connections; with count, first set it to that until MariaDB restarts."""
        change = f"SET GLOBAL max_connections = {int(count)}; " if count else ""
        return int(self.sql(f"{change}SELECT @@max_connections;").split()[-1])

    def queued(self) -> int:
        return sum(self.queue_lengths(QUEUE).values())

    def start_esi_stub(self) -> bool:
        """Start the stub unless it runs; True if this call started it."""
        running = self.compose("--profile", "loadtest", "ps", "--quiet", "esi-stub").stdout.strip()
        if not running:
            self.compose("--profile", "loadtest", "up", "--detach", "--no-deps", "esi-stub")
        return not running

    def stop_esi_stub(self) -> None:
        self.compose("--profile", "loadtest", "rm", "--stop", "--force", "esi-stub")

    def cpu_seconds(self, services: tuple) -> dict:
        """The CPU time each of these services' containers has used so far, and when it was read."""
        return {service: (time.monotonic(), container_cpu_seconds(self.container(service))) for service in services}

    def worker_limits(self) -> dict:
        limits = self.model()["services"]["worker"]["deploy"]["resources"]["limits"]
        return {"cpus": float(limits["cpus"]), "memory": int(limits["memory"])}


class Variant:
    """A Celery worker in a one-off container of the `worker` service, consuming `loadtest`."""

    def __init__(self, stack: Stack, name: str, pool: str, concurrency: int):
        self.stack, self.name, self.pool, self.concurrency = stack, name, pool, concurrency
        self.container = None
        # (time, RSS bytes of the Celery processes, CPU seconds of the container, host CPU (busy, total))
        self.samples = []

    def command(self) -> list:
        return ["celery", "-A", "myauth", "worker", f"--pool={self.pool}", f"--concurrency={self.concurrency}",
                f"--queues={QUEUE}", f"--hostname={self.name}@%h", "--loglevel=INFO"]

    def start(self) -> None:
        result = self.stack.compose("run", "--detach", "--no-deps", "--rm", "-e", "DIAGNOSTICS_ENABLED=true",
                                    "worker", *self.command())
        self.container = result.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 120
        while f"{self.name}@" not in self.logs() or " ready." not in self.logs():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready:\n{self.logs()[-3000:]}")
            time.sleep(0.5)

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.container], capture_output=True, text=True)
        return result.stdout + result.stderr

    def sample(self) -> tuple:
        """RSS of the Celery processes (a prefork pool's children included) and the container's CPU seconds."""
        script = "ps -eo rss=,args= | awk '/[c]elery -A myauth/ {s += $1} END {print s * 1024}'; " + CPU_NANOSECONDS
        output = subprocess.run(["docker", "exec", self.container, "sh", "-c", script],
                                capture_output=True, text=True).stdout.split()
        sample = (time.time(), int(output[0]), int(output[1]) / 1e9, host_cpu())
        self.samples.append(sample)
        return sample

    def sample_while(self, running: threading.Event, every: float = 1.0) -> threading.Thread:
        def loop():
            while running.is_set():
                self.sample()
                time.sleep(every)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def broker_trouble(self) -> dict:
        """How often each line of BROKER_TROUBLE appeared in the worker's log (kept after stop())."""
        return {line: self.log.count(line) for line in BROKER_TROUBLE if line in self.log}

    def stop(self) -> None:
        """Warm shutdown (running tasks finish, unstarted ones go back to the queue), then remove."""
        subprocess.run(["docker", "stop", "--time", "60", self.container], capture_output=True)
        self.log = self.logs()
        subprocess.run(["docker", "rm", "--force", self.container], capture_output=True)


CPU_NANOSECONDS = ("cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null "
                   "|| awk '/^usage_usec/ {print $2 * 1000}' /sys/fs/cgroup/cpu.stat")


def container_cpu_seconds(container: str) -> float:
    """The CPU time a container has used so far (the shell that reads it included)."""
    output = subprocess.run(["docker", "exec", container, "sh", "-c", CPU_NANOSECONDS],
                            capture_output=True, text=True, check=True).stdout
    return int(output.split()[0]) / 1e9


def idle_cpu(container: str, seconds: float = 30) -> float:
    """The share of one core a container uses over `seconds`."""
    before, began = container_cpu_seconds(container), time.monotonic()
    time.sleep(seconds)
    return (container_cpu_seconds(container) - before) / (time.monotonic() - began)


def host_cpu() -> tuple:
    """The host's CPU time so far, in ticks: (busy, total). Busy includes steal: time the
    hypervisor gave to another guest is time this host could not use."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def cores(limits: dict) -> int:
    """Processes for 'one per core' within the worker container's CPU limit."""
    return max(1, math.ceil(limits["cpus"]))
