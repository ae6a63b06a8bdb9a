"""Diagnostic tasks. Each records what it did in Redis (db 1, keys diagnostics:*), so a test can
read which tasks ran, in what order, where and for how long, from the tasks themselves."""

import json
import os
import socket
import time
import urllib.request
import uuid

from celery import current_task, shared_task
from django.core.cache import caches
from django.db import connection, transaction

from allianceauth.services.tasks import QueueOnce
from allianceauth.utils.cache import get_redis_client

from .models import TaskRow

EVENTS = "diagnostics:events"
_held_memory = []  # what hold_memory keeps alive until the process restarts


def record(label: str, event: str) -> None:
    request = current_task.request
    record_event(label, event, request.id, request.delivery_info, request.hostname)


def record_event(label: str, event: str, task_id: str, delivery_info: dict, node: str) -> None:
    get_redis_client().rpush(EVENTS, json.dumps({
        "label": label,
        "event": event,
        "time": time.time(),
        "task_id": task_id,
        "priority": (delivery_info or {}).get("priority"),
        "node": node,
        "container": socket.gethostname(),
        "pid": os.getpid(),
        "cache": cache_identity(),
    }))


def cache_identity() -> str:
    """Which Django cache object this task used: one per process, or one per thread (greenlet)."""
    return vars(caches["default"]).setdefault("_diagnostics_identity", uuid.uuid4().hex)


@shared_task(name="diagnostics.mark")
def mark(label: str) -> None:
    """Records that it ran, nothing else."""
    record(label, "start")
    record(label, "end")


@shared_task(name="diagnostics.write_row")
def write_row(label: str) -> None:
    """Writes one row to the database, as an Alliance Auth task stores what it fetched."""
    record(label, "start")
    TaskRow.objects.create(label=label, task_id=current_task.request.id)
    record(label, "end")


@shared_task(name="diagnostics.write_row_left_uncommitted")
def write_row_left_uncommitted(label: str) -> None:
    """Writes one row inside a transaction it never ends: the pool must roll it back."""
    record(label, "start")
    transaction.set_autocommit(False)
    TaskRow.objects.create(label=label, task_id=current_task.request.id)
    record(label, "end")


@shared_task(name="diagnostics.hold_database")
def hold_database(label: str, seconds: float) -> None:
    """Keeps a database connection busy for `seconds` (MariaDB's SLEEP)."""
    record(label, "start")
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(%s)", [seconds])
    record(label, "end")


@shared_task(name="diagnostics.esi_update")
def esi_update(label: str, url: str) -> None:
    """Like an Alliance Auth ESI update: one HTTP request (to the load test's ESI stub), then one
    database row."""
    record(label, "start")
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    TaskRow.objects.create(label=label, task_id=current_task.request.id)
    record(label, "end")


@shared_task(name="diagnostics.sleep")
def sleep(label: str, seconds: float) -> None:
    """Waits like an I/O call: cooperative under gevent (time.sleep is patched), so other tasks run."""
    record(label, "start")
    time.sleep(seconds)
    record(label, "end")


@shared_task(name="diagnostics.burn_cpu")
def burn_cpu(label: str, seconds: float) -> int:
    """Busy-loops for `seconds` of wall time (a CPU-bound task; blocks a gevent worker's hub)."""
    record(label, "start")
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        count += 1
    record(label, "end")
    return count


@shared_task(name="diagnostics.hold_memory")
def hold_memory(label: str, mib: int, after_seconds: float = 0) -> None:
    """Grows the process by `mib` MiB and keeps it, like a leak, until the process restarts;
    after waiting `after_seconds` (cooperatively), e.g. until the worker has fetched every task."""
    record(label, "start")
    time.sleep(after_seconds)
    block = bytearray(mib * 1024 * 1024)
    for offset in range(0, len(block), 4096):  # touch every page, so it counts in RSS
        block[offset] = 1
    _held_memory.append(block)
    record(label, "end")


@shared_task(name="diagnostics.load")
def load(run: str, kind: str, sent_at: float, url: str = "", cpu_ms: float = 0) -> None:
    """The load test's task (scripts/loadtest). kind "esi": one HTTP request to the ESI stub,
    then one small database write, as an Alliance Auth ESI update does; "cpu": cpu_ms of pure
    computation; "noop": nothing. Appends one record to the Redis list loadtest:<run>:
    [priority, sent, start, end, pid, container, ok, task id, error ("" when ok), redelivered]."""
    request, start, error = current_task.request, time.time(), "did not finish"
    try:
        if kind == "esi":
            with urllib.request.urlopen(url, timeout=60) as response:
                response.read()
            TaskRow.objects.create(label=run, task_id=request.id)
        elif kind == "cpu":
            deadline = time.thread_time() + cpu_ms / 1000
            while time.thread_time() < deadline:
                pass
        error = ""
    except Exception as failure:
        error = f"{type(failure).__name__}: {failure}"[:120]
        raise
    finally:
        info = request.delivery_info or {}
        get_redis_client().rpush(f"loadtest:{run}", json.dumps(
            [info.get("priority"), sent_at, start, time.time(), os.getpid(), socket.gethostname(), not error,
             request.id, error, bool(info.get("redelivered"))]))


@shared_task(name="diagnostics.once", base=QueueOnce)
def once(label: str, seconds: float = 0, fail: bool = False) -> None:
    """Alliance Auth's QueueOnce: a second enqueue with the same arguments while one is queued or
    running returns None instead of queuing (graceful)."""
    record(label, "start")
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"{label} failed on purpose")
    record(label, "end")
