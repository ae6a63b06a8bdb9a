"""What the load test sends, and what the tasks recorded of it.

Tasks are sent from the web container, as a view would send them, to the queue `loadtest`
(the diagnostics app's send-load action);
each records [priority, sent, start, end, pid, container, ok, task id, error, redelivered] in the
Redis list loadtest:<run> (diagnostics.load), so every figure comes from the tasks' own timestamps.
"""

import json
import statistics
import subprocess
import uuid
from dataclasses import dataclass, field

from .stack import QUEUE, Stack


@dataclass
class Load:
    """count tasks of a mix of kinds ({"esi": 90, "cpu": 5, "noop": 5}) and priorities ({7: 80, ...}),
    all at once or at `rate` per second."""

    count: int
    mix: dict = field(default_factory=lambda: {"esi": 100})
    priorities: dict = field(default_factory=lambda: {7: 80, 5: 15, 2: 5})
    rate: float = 0
    latency_ms: float = 300
    jitter_ms: float = 100
    cpu_ms: float = 20
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def spec(self) -> dict:
        return {
            "run": self.run, "count": self.count, "mix": self.mix, "rate": self.rate, "queue": QUEUE,
            "priorities": {str(p): w for p, w in self.priorities.items()}, "cpu_ms": self.cpu_ms,
            "url": f"http://esi-stub:8080/?ms={self.latency_ms}&jitter={self.jitter_ms}",
        }

    def send(self, stack: Stack) -> dict:
        return stack.diagnostics("send-load", spec=self.spec())

    def send_in_background(self, stack: Stack) -> subprocess.Popen:
        return stack.diagnostics_in_background("send-load", spec=self.spec())


@dataclass
class Record:
    priority: int
    sent: float
    start: float
    end: float
    pid: int
    container: str
    ok: bool
    task_id: str
    error: str
    redelivered: bool  # the broker handed the message out again (a worker died holding it)

    @property
    def wait(self) -> float:
        return self.start - self.sent

    @property
    def runtime(self) -> float:
        return self.end - self.start


def collect(stack: Stack, run: str) -> list:
    """The records of a run, then forget them in Redis."""
    key = f"loadtest:{run}"
    lines = stack.redis("-n", "1", "lrange", key, "0", "-1").splitlines()
    stack.redis("-n", "1", "del", key)
    return [Record(*json.loads(line)) for line in lines if line]


def completed(stack: Stack, run: str) -> int:
    """Tasks of the run that have finished, each counted once however often it ran."""
    lines = stack.redis("-n", "1", "lrange", f"loadtest:{run}", "0", "-1").splitlines()
    return len({Record(*json.loads(line)).task_id for line in lines if line})


def extra_runs(records: list) -> dict:
    """Runs of a task beyond its first, and how many of them the broker had marked as redelivered."""
    seen, extra = set(), []
    for record in sorted(records, key=lambda r: r.start):
        if record.task_id in seen:
            extra.append(record)
        seen.add(record.task_id)
    return {"count": len(extra), "redelivered": sum(r.redelivered for r in extra),
            "task_ids": [r.task_id for r in extra][:20]}


def percentiles(values: list) -> dict:
    """p50, p95 and p99 in milliseconds."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        values = values * 2
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {name: round(cuts[index] * 1000, 1) for name, index in (("p50", 49), ("p95", 94), ("p99", 98))}


def throughput(records: list, since: float, until: float) -> float:
    """Tasks per second that ended within [since, until]."""
    ended = [r for r in records if since <= r.end <= until]
    return len(ended) / (until - since) if until > since else 0.0


def by_priority(records: list) -> dict:
    groups = {}
    for record in records:
        groups.setdefault(record.priority, []).append(record)
    return {
        str(priority): {"tasks": len(group), "wait_ms": percentiles([r.wait for r in group]),
                        "run_ms": percentiles([r.runtime for r in group])}
        for priority, group in sorted(groups.items())
    }
