"""Drive the diagnostics tasks on a running test stack and read back what they recorded.

Tasks are enqueued from the web container, the way a view would; each task records its start
and end (time, node, pid, priority) in Redis, and the tests read those records, supervisord's
state and the containers' logs.
"""

import base64
import json
import os
import signal
import threading
import time

import requests
from monitoring.keys import PRIORITIES, bucket_key

from stackctl.stack import Stack
# KEYS: the held-hash prefix and kombu's unacked hash; ARGV: leases. Every message they hold
# (a tag acknowledged meanwhile is no longer in unacked: skipped).
HELD_MESSAGES = """
local messages = {}
for _, lease in ipairs(ARGV) do
  for _, tag in ipairs(redis.call('HKEYS', KEYS[1] .. lease)) do
    local message = redis.call('HGET', KEYS[2], tag)
    if message then table.insert(messages, message) end
  end
end
return messages
"""


def calls(task: str, prefix: str, count: int, *args, **options) -> list:
    """[(task, [label, *args], options)] for `count` tasks labelled prefix-0000, prefix-0001, ..."""
    return [(task, [f"{prefix}-{i:04d}", *args], options) for i in range(count)]


def labels(batch: list) -> set:
    return {call[1][0] for call in batch}


def label_of(message: dict):
    """A diagnostics task's label (its first argument) from a kombu message; None for a task without arguments."""
    args = json.loads(base64.b64decode(message["body"]))[0]
    return args[0] if args else None


class Poller(threading.Thread):
    """GETs a page every 0.2 s until stopped; keeps (time, status) with status 0 for no answer."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.results, self.stopped = url, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                status = requests.get(self.url, timeout=10).status_code
            except requests.RequestException:
                status = 0
            self.results.append((time.time(), status))
            time.sleep(0.2)

    def stop(self) -> list:
        """Stop polling; return the (time, status) of each poll."""
        self.stopped.set()
        self.join()
        return self.results


class Stream(threading.Thread):
    """Enqueues batches of `task` (label, *args) back to back until stopped, as a site's traffic
    goes on while an operator changes something (a worker setting, a backup)."""

    def __init__(self, diag, task: str, prefix: str, batch: int, *args):
        super().__init__(daemon=True)
        self.diag, self.task, self.prefix, self.batch, self.args = diag, task, prefix, batch, args
        self.sent, self.error, self.stopped = set(), None, threading.Event()

    def run(self):
        try:
            while not self.stopped.is_set():
                batch = calls(self.task, f"{self.prefix}-{len(self.sent) // self.batch:03d}", self.batch, *self.args)
                self.diag.enqueue(batch)
                self.sent |= labels(batch)
        except Exception as error:  # reported by stop()
            self.error = error

    def stop(self) -> set:
        """Stop after the batch being sent; return every label sent."""
        self.stopped.set()
        self.join()
        assert self.error is None, f"enqueueing the stream failed: {self.error!r}"
        return self.sent


class Diagnostics:
    """The test stack (a stackctl Stack) and what the diagnostics tasks recorded in it."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def compose(self, *args: str, check: bool = True):
        return self.stack.compose(*args, check=check)

    def run(self, service: str, *command: str, **environment: str) -> str:
        """Run a command in the service's container, with these variables; fail the test if it fails."""
        return self.stack.exec(service, *command, **environment)

    def enqueue(self, calls: list) -> list:
        """[(task name, args, apply_async options), ...] -> task ids (None where QueueOnce declined)."""
        return self.stack.diagnostics("enqueue", calls=calls)

    def redis(self, *command: str) -> str:
        return self.stack.redis(*command)

    def reset(self) -> None:
        """Wait until no task is queued or held by a worker (beat adds one a minute; a killed
        worker's tasks are re-queued after the visibility timeout), then forget earlier records."""
        try:
            self.wait_for(lambda: self.queued() == 0 and self.in_flight() == 0, 90, "the queues to drain")
        except AssertionError as error:  # say what stayed, so that a stuck queue explains itself
            stuck = {q: {p: n for p, n in self.queue_lengths(q).items() if n} for q in ("celery", "cpu")}
            raise AssertionError(f"{error}: waiting {stuck}, labels {sorted(self.queued_labels())[:20]}; "
                                 f"in flight {self.in_flight()}, held {self.held()}, leases {self.leases()}") from None
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

    def queue_lengths(self, queue: str = "celery") -> dict:
        return self.stack.queue_lengths(queue)

    def waiting(self, queue: str, priority: int) -> list:
        """The messages waiting in one priority bucket, as kombu stores them."""
        messages = self.redis("lrange", bucket_key(queue, priority), "0", "-1").splitlines()
        return [json.loads(m) for m in messages if m]  # an empty list prints ""

    def queued_tasks(self, queue: str = "celery") -> dict:
        """{priority bucket: [task name of each waiting message]}."""
        return {p: [m["headers"]["task"] for m in self.waiting(queue, p)] for p in PRIORITIES}

    def queued_labels(self) -> set:
        """The labels (first argument) of every waiting diagnostics task, whatever its queue."""
        return {label_of(m) for q in ("celery", "cpu") for p in PRIORITIES for m in self.waiting(q, p)} - {None}

    def queued(self) -> int:
        return sum(sum(self.queue_lengths(q).values()) for q in ("celery", "cpu"))

    def in_flight(self) -> int:
        """Messages workers have taken and not yet acknowledged (kombu's unacked hash)."""
        return int(self.redis("hlen", "unacked"))

    def lease_settings(self) -> dict:
        """LEASE_PREFIX, HELD_PREFIX, UNACKED, LEASE_SECONDS and BEAT_SECONDS, as the worker has them (lease.py)."""
        if not hasattr(self, "_lease_settings"):
            Diagnostics._lease_settings = self.stack.diagnostics("lease-settings", service="worker")
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
        """The labels of the tasks held under these leases, read from the messages the broker keeps,
        in one Redis call: quick enough to follow a kill well before a live worker hands them back."""
        settings = self.lease_settings()
        messages = self.redis("eval", HELD_MESSAGES, "2", settings["HELD_PREFIX"], settings["UNACKED"], *leases)
        return {label_of(json.loads(line)[0]) for line in messages.splitlines() if line} - {None}

    def runs(self) -> dict:
        """{label: how many times a task with it started}."""
        counts = {}
        for event in self.started():
            counts[event["label"]] = counts.get(event["label"], 0) + 1
        return counts

    def rows_written(self, prefix: str) -> tuple:
        """(distinct labels, rows) of the diagnostics rows whose label starts with `prefix`."""
        return tuple(self.stack.diagnostics("rows-written", prefix=prefix))

    def supervisor(self, *args: str) -> str:
        return self.stack.supervisor(*args)

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
        Stack(env_file).compose("up", "--detach", "--no-deps", "--wait", "worker")

    def container_state(self, service: str) -> dict:
        return self.stack.inspect(service)["State"]

    def wait_healthy(self, service: str, timeout: float = 120) -> None:
        self.wait_for(lambda: self.container_state(service).get("Health", {}).get("Status") == "healthy",
                      timeout, f"{service} to be healthy")

    def logs(self, service: str) -> str:
        return self.stack.logs(service)

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
