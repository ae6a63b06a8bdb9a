"""Task outcomes counted in Redis for the exporter (monitoring/), surviving any Django start.

Alliance Auth's dashboard counts outcomes in Redis too, but AuthenticationConfig.ready() clears
them, so every manage.py command and every web or worker start wipes them. These counts are
only ever incremented. Each worker process counts in memory from Celery's signals and adds its
counts to the hash every FLUSH_SECONDS from its consumer's timer: no Redis round trip per task.
A process killed outright loses at most its last FLUSH_SECONDS of counts. A prefork child
(worker-cpu) has no consumer timer: it adds each outcome as its task ends, one HINCRBY after a
CPU-bound task.

Every published task also carries the time it was sent (a header), so the exporter can tell
the age of the oldest task waiting in each bucket.
"""

import threading
import time

import redis
from celery import bootsteps, signals

from monitoring import keys

FLUSH_SECONDS = 5

_counts = {}
_lock = threading.Lock()  # gevent's when threading is patched: the same world as the signals
_child_client = None  # set in a prefork child, which flushes as each task ends


def count(outcome: str, sender) -> None:
    field = keys.task_count_field(outcome, getattr(sender, "name", None) or "?")
    with _lock:
        _counts[field] = _counts.get(field, 0) + 1
    if _child_client is not None:
        flush(_child_client)


def take() -> dict:
    global _counts
    with _lock:
        taken, _counts = _counts, {}
    return taken


def give_back(counts: dict) -> None:
    with _lock:
        for field, number in counts.items():
            _counts[field] = _counts.get(field, 0) + number


def flush(client) -> None:
    counts = take()
    if not counts:
        return
    try:
        with client.pipeline(transaction=True) as pipe:
            for field, number in counts.items():
                pipe.hincrby(keys.TASK_COUNTS, field, number)
            pipe.execute()
    except redis.RedisError:
        give_back(counts)  # the next flush tries again


def stamp_sent_at(headers=None, **kwargs) -> None:
    if headers is not None:
        headers.setdefault(keys.SENT_AT_HEADER, round(time.time(), 3))


class TaskCountsStep(bootsteps.StartStopStep):
    """Consumer step: flushes this process's counts every FLUSH_SECONDS and when it stops."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer, **kwargs):
        super().__init__(consumer, **kwargs)
        self.timer_entry = None
        self.client = None

    def start(self, consumer):
        self.client = redis.Redis.from_url(consumer.app.conf.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self.timer_entry = consumer.timer.call_repeatedly(FLUSH_SECONDS, flush, (self.client,))

    def stop(self, consumer):
        if self.timer_entry is not None:
            self.timer_entry.cancel()
        if self.client is not None:
            flush(self.client)


def flush_in_child(**kwargs) -> None:
    global _child_client
    from celery import current_app
    _child_client = redis.Redis.from_url(current_app.conf.broker_url, socket_timeout=5, socket_connect_timeout=5)


def apply(app) -> None:
    signals.worker_process_init.connect(flush_in_child, weak=False)
    signals.task_success.connect(lambda sender=None, **kwargs: count("succeeded", sender), weak=False)
    signals.task_failure.connect(lambda sender=None, **kwargs: count("failed", sender), weak=False)
    signals.task_retry.connect(lambda sender=None, **kwargs: count("retried", sender), weak=False)
    signals.before_task_publish.connect(stamp_sent_at, weak=False)
    app.steps["consumer"].add(TaskCountsStep)
