"""The Redis keys the exporter reads, and how to read their names. No I/O: unit-tested.

Written by the workers (lease.py: leases, held hashes; myauth/task_counts.py: outcomes), by
beat (myauth/beat.py: its tick), by the supervisord listener in each worker container (supervisor_listener.py) and by kombu
(bindings and the queues' priority lists, all in the broker's database 0).
"""

import json

SEPARATOR = "\x06\x16"  # kombu's: between a queue and its priority, and in a binding's fields
PRIORITIES = range(10)  # Alliance Auth's priority_steps (myauth/celery.py)
BINDING_PREFIX = "_kombu.binding."
LEASE_PREFIX = "_myauth.lease."  # a worker process's lease (myauth/lease.py)
HELD_PREFIX = "_myauth.held."  # hash of the messages a worker process holds (myauth/lease.py)
TASK_COUNTS = "_myauth.tasks"  # hash: "<outcome>:<task name>" -> count (myauth/task_counts.py)
SUPERVISOR_PREFIX = "_myauth.supervisor."  # hash per worker container (supervisor_listener.py)
BEAT_TICK = "_myauth.beat.tick"  # set by beat's scheduler on every tick (myauth/beat.py), expiring:
BEAT_TICK_SECONDS = 30  # beat ticks at least every 5 s (django-celery-beat's max interval)
SENT_AT_HEADER = "myauth_sent_at"  # epoch seconds, set at publish (myauth/task_counts.py)
OUTCOMES = ("succeeded", "failed", "retried")
# Exchanges that are Celery's own plumbing, not task queues: remote control and events.
PLUMBING_EXCHANGE_SUFFIXES = (".pidbox", "celeryev")


def text(value) -> str:
    """A Redis key or value as text; bytes that are not UTF-8 stay visible as escapes."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def bucket_key(queue: str, priority: int) -> str:
    """kombu's list for a queue's priority bucket: the bare name for 0."""
    return queue if priority == 0 else f"{queue}{SEPARATOR}{priority}"


def bound_queue(binding_key: str, member: str):
    """The queue a kombu binding routes to, or None: Celery's plumbing, or not a binding.

    A binding is a member of the set `_kombu.binding.<exchange>`: routing key, pattern and
    queue joined by SEPARATOR."""
    exchange = binding_key[len(BINDING_PREFIX):]
    if not binding_key.startswith(BINDING_PREFIX) or exchange.endswith(PLUMBING_EXCHANGE_SUFFIXES):
        return None
    fields = member.split(SEPARATOR)
    if len(fields) != 3 or not fields[2]:
        return None
    return fields[2]


def lease_queues(value: str) -> list:
    """The queues a lease's worker process consumes (lease.py's description); [] if unknown."""
    try:
        queues = json.loads(value).get("queues", [])
    except (ValueError, AttributeError):
        return []
    return [queue for queue in queues if isinstance(queue, str)] if isinstance(queues, list) else []


def sent_at(message: str):
    """When a queued message was published (SENT_AT_HEADER), or None: not ours, or malformed."""
    try:
        value = json.loads(message)["headers"][SENT_AT_HEADER]
    except (ValueError, TypeError, KeyError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def task_count_field(outcome: str, task: str) -> str:
    return f"{outcome}:{task}"


def task_counts(fields: dict) -> dict:
    """The task counts hash -> {(outcome, task): count}; fields that do not parse are left out."""
    counts = {}
    for field, value in fields.items():
        outcome, colon, task = text(field).partition(":")
        if outcome in OUTCOMES and colon and task:
            try:
                counts[(outcome, task)] = int(value)
            except ValueError:
                continue
    return counts


def supervisor_fields(fields: dict) -> dict:
    """A supervisor hash {"<figure>:<process>": number} -> {(figure, process): number}; fields
    that do not parse are left out."""
    figures = {}
    for field, value in fields.items():
        figure, colon, process = text(field).partition(":")
        try:
            figures[(figure, process)] = float(value)
        except ValueError:
            continue
        if not colon or not process:
            del figures[(figure, process)]
    return figures
