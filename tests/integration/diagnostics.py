"""Drive the diagnostics tasks on a running test stack and read back what they recorded.

Tasks are enqueued from the web container, the way a view would; each task records its start
and end (time, node, pid, priority) in Redis, and the tests read those records, supervisord's
state and the containers' logs.
"""

import base64
import json
import os
import signal
import subprocess
import time

from tests.conftest import ROOT, inspect, run_in

ENQUEUE = """
import json, os
import diagnostics.tasks
from celery import current_app
ids = []
for name, args, options in json.loads(os.environ["CALLS"]):
    result = current_app.tasks[name].apply_async(args=args, **options)
    ids.append(result.id if result is not None else None)
print(json.dumps(ids))
"""
ENQUEUE_BATCH = 500  # calls per exec: they travel in one environment variable, capped at 128 KiB
SUPERVISORCTL = ("supervisorctl", "-c", "/etc/supervisor/supervisord.conf")
PRIORITY_QUEUE_SEPARATOR = "\x06\x16"  # kombu's Redis key for priority p>0: "celery\x06\x16<p>"


class Diagnostics:
    def __init__(self, stack):
        self.stack = stack

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.stack.docker_compose_command(), *args], capture_output=True, text=True, check=check)

    def enqueue(self, calls: list) -> list:
        """[(task name, args, apply_async options), ...] -> task ids (None where QueueOnce declined)."""
        ids = []
        for start in range(0, len(calls), ENQUEUE_BATCH):
            batch = json.dumps(calls[start:start + ENQUEUE_BATCH])
            result = subprocess.run(
                [*self.stack.docker_compose_command(), "exec", "-T", "-e", f"CALLS={batch}", "web",
                 "python3", "manage.py", "shell", "-c", ENQUEUE],
                capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            ids += json.loads(result.stdout.strip().splitlines()[-1])
        return ids

    def redis(self, *command: str) -> str:
        return run_in(self.stack, "redis", "redis-cli", "--raw", *command)

    def reset(self) -> None:
        """Wait until no task is queued or held by a worker (beat adds one a minute; a killed
        worker's tasks are re-queued after the visibility timeout), then forget earlier records."""
        self.wait_for(lambda: self.queued() == 0 and self.in_flight() == 0, 90, "the queues to drain")
        self.redis("-n", "1", "del", "diagnostics:events")

    def events(self) -> list:
        lines = self.redis("-n", "1", "lrange", "diagnostics:events", "0", "-1").splitlines()
        return sorted((json.loads(line) for line in lines if line), key=lambda e: e["time"])

    def started(self, prefix: str = "") -> list:
        return [e for e in self.events() if e["event"] == "start" and e["label"].startswith(prefix)]

    def ended_labels(self) -> set:
        return {e["label"] for e in self.events() if e["event"] == "end"}

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            time.sleep(0.5)

    def wait_until_ended(self, labels, timeout: float = 120) -> list:
        labels = set(labels)
        self.wait_for(lambda: labels <= self.ended_labels(), timeout,
                      f"{len(labels)} tasks to end ({len(labels - self.ended_labels())} still missing)")
        return self.events()

    @staticmethod
    def bucket_key(queue: str, priority: int) -> str:
        return queue if priority == 0 else f"{queue}{PRIORITY_QUEUE_SEPARATOR}{priority}"

    def queue_lengths(self, queue: str = "celery") -> dict:
        """Messages waiting per priority bucket (0 is kombu's unsuffixed key)."""
        return {p: int(self.redis("llen", self.bucket_key(queue, p))) for p in range(10)}

    def queued_tasks(self, queue: str = "celery") -> dict:
        """{priority bucket: [task name of each waiting message]}."""
        def tasks(priority):
            messages = self.redis("lrange", self.bucket_key(queue, priority), "0", "-1").splitlines()
            return [json.loads(m)["headers"]["task"] for m in messages if m]  # an empty list prints ""

        return {p: tasks(p) for p in range(10)}

    def queued(self) -> int:
        return sum(sum(self.queue_lengths(q).values()) for q in ("celery", "cpu"))

    def in_flight(self) -> int:
        """Messages workers have taken and not yet acknowledged (kombu's unacked hash)."""
        return int(self.redis("hlen", "unacked"))

    def lease_settings(self) -> dict:
        """LEASE_PREFIX, HELD_PREFIX, UNACKED, LEASE_SECONDS and BEAT_SECONDS, as the worker has them (lease.py)."""
        if not hasattr(self, "_lease_settings"):
            script = ("import json; from myauth import lease; print(json.dumps({name: getattr(lease, name) for name in "
                      "('LEASE_PREFIX', 'HELD_PREFIX', 'UNACKED', 'LEASE_SECONDS', 'BEAT_SECONDS')}))")
            Diagnostics._lease_settings = json.loads(run_in(self.stack, "worker", "python3", "-c", script))
        return self._lease_settings

    def leases(self) -> dict:
        """{lease id: milliseconds it has left} of every worker process's lease."""
        prefix = self.lease_settings()["LEASE_PREFIX"]
        keys = self.redis("--scan", "--pattern", f"{prefix}*").split()
        return {key[len(prefix):]: int(self.redis("pttl", key)) for key in keys}

    def held(self) -> dict:
        """{lease id: {delivery tag: list it was taken from}} of every worker process that holds messages."""
        prefix = self.lease_settings()["HELD_PREFIX"]
        held = {}
        for key in self.redis("--scan", "--pattern", f"{prefix}*").split():
            fields = self.redis("hgetall", key).splitlines()
            held[key[len(prefix):]] = dict(zip(fields[::2], fields[1::2]))
        return held

    def labels_held(self, leases) -> set:
        """The labels of the tasks held under these leases, read from the messages the broker keeps."""
        labels = set()
        for lease, tags in self.held().items():
            if lease in leases and tags:
                entries = self.redis("hmget", self.lease_settings()["UNACKED"], *tags).splitlines()
                for entry in filter(None, entries):  # (one acknowledged since: gone)
                    message = json.loads(entry)[0]
                    labels.add(json.loads(base64.b64decode(message["body"]))[0][0])
        return labels

    def runs(self) -> dict:
        """{label: how many times a task with it started}."""
        counts = {}
        for event in self.started():
            counts[event["label"]] = counts.get(event["label"], 0) + 1
        return counts

    def supervisor(self, *args: str) -> str:
        result = subprocess.run([*self.stack.docker_compose_command(), "exec", "-T", "worker", *SUPERVISORCTL, *args],
                                capture_output=True, text=True)
        return result.stdout

    def supervisor_pids(self) -> dict:
        """{process name: pid} of every RUNNING supervisord process."""
        pids = {}
        for line in self.supervisor("status").splitlines():
            name, state, *rest = line.split()
            if state == "RUNNING":
                pids[name] = int(rest[1].rstrip(","))
        return pids

    @staticmethod
    def with_worker_environment(env_file, directory, **environment: str):
        """A copy of a stack's env file whose COMPOSE_FILE adds these worker settings."""
        override, changed = directory / "worker-override.yaml", directory / "changed.env"
        override.write_text(json.dumps({"services": {"worker": {"environment": environment}}}))
        text = env_file.read_text()
        compose_file = next(line for line in text.splitlines() if line.startswith("COMPOSE_FILE="))
        changed.write_text(text.replace(compose_file, f"{compose_file}:{override}"))
        return changed

    @staticmethod
    def up_worker(env_file) -> None:
        """`docker compose up -d` of the worker with this env file, as an operator applies a change."""
        subprocess.run(["docker", "compose", "--env-file", str(env_file), "up", "--detach", "--no-deps", "--wait", "worker"],
                       cwd=ROOT, check=True, capture_output=True)

    def container_state(self, service: str) -> dict:
        container_id = self.compose("ps", "--all", "--quiet", service).stdout.strip()
        return inspect(container_id)["State"]

    def wait_healthy(self, service: str, timeout: float = 120) -> None:
        self.wait_for(lambda: self.container_state(service).get("Health", {}).get("Status") == "healthy",
                      timeout, f"{service} to be healthy")

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout

    def crash(self, service: str) -> float:
        """SIGKILL the container's PID 1 from the host, as the kernel's OOM killer would; return
        when. (`docker kill` is not a crash to Docker: it counts as a manual stop, and no restart
        policy brings the container back.)"""
        os.kill(self.container_state(service)["Pid"], signal.SIGKILL)
        return time.time()

    def wait_restarted(self, service: str, started_at: str, timeout: float = 120) -> None:
        """Wait until Docker has started the container again (a new StartedAt) and it is healthy."""
        self.wait_for(lambda: self.container_state(service)["StartedAt"] != started_at, 60,
                      f"docker to restart {service}")
        self.wait_healthy(service, timeout)
