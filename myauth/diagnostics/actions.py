"""What the integration tests and the load test do inside the stack's containers, through
`manage.py diagnostics ACTION` (stackctl.stack.Stack.diagnostics): each action takes keyword
arguments (JSON on stdin) and returns something JSON, printed as the command's last line.

Actions run in the web container unless their caller says otherwise; they enqueue as a view
would, read the database and Redis as the stack's code does, or set up a fault.
"""

import base64
import json
import threading
import time
import timeit

import redis
from celery import current_app
from django.conf import settings
from django.db import connection
from monitoring.keys import bucket_key

ACTIONS = {}


def action(function):
    ACTIONS[function.__name__.replace("_", "-")] = function
    return function


# Enqueueing, as a view or beat would.

@action
def enqueue(calls: list) -> list:
    """[(task name, args, apply_async options), ...] -> task ids (None where QueueOnce declined)."""
    import diagnostics.tasks  # noqa: F401  (registers the diagnostics tasks)

    ids = []
    for name, args, options in calls:
        result = current_app.tasks[name].apply_async(args=args, **options)
        ids.append(result.id if result is not None else None)
    return ids


@action
def stream_marks(seconds: float) -> dict:
    """diagnostics.mark every 10 ms for `seconds`: {"sent": [[label, when]], "failed": [[label, when, error]]},
    the enqueues that returned and those that raised (a Redis outage meanwhile)."""
    from diagnostics import tasks

    sent, failed, end, number = [], [], time.time() + seconds, 0
    while time.time() < end:
        label, number = f"stream-{number:05d}", number + 1
        try:
            tasks.mark.apply_async(args=[label])
            sent.append([label, time.time()])
        except Exception as error:
            failed.append([label, time.time(), repr(error)])
        time.sleep(0.01)
    return {"sent": sent, "failed": failed}


@action
def enqueue_until_refused(padding: int = 4096, most: int = 100000) -> dict:
    """Padded diagnostics.sleep tasks until Redis refuses one: the labels it took, and the error."""
    from diagnostics import tasks

    accepted, error = [], None
    while error is None and len(accepted) < most:
        label = f"fill-{len(accepted):06d}"
        try:
            tasks.sleep.apply_async(args=[label, 0], kwargs={}, headers={"padding": "x" * padding})
            accepted.append(label)
        except Exception as refused:
            error = f"{type(refused).__name__}: {refused}"
    return {"accepted": accepted, "error": error}


@action
def enqueue_oversized() -> dict:
    """A task message twice the broker's limit: the limit, and what the enqueue raised."""
    from diagnostics import tasks
    from myauth.broker import MAX_MESSAGE_BYTES

    try:
        tasks.mark.apply_async(args=["x" * 2 * MAX_MESSAGE_BYTES])
    except Exception as refused:
        return {"limit": MAX_MESSAGE_BYTES, "error": f"{type(refused).__name__}: {refused}"}
    return {"limit": MAX_MESSAGE_BYTES, "error": None}


@action
def send_cleanup_task() -> str:
    """Alliance Auth's own periodic task (django-esi's cleanup), sent as beat sends it: its id."""
    from esi.tasks import cleanup_callbackredirect

    return cleanup_callbackredirect.apply_async(priority=5).id


@action
def send_load(spec: dict) -> dict:
    """The load test's tasks (loadtest/workload.py): spec["count"] diagnostics.load tasks of its mix
    of kinds and priorities, all at once or at spec["rate"] a second."""
    import random

    rng = random.Random(spec["run"])
    kinds = rng.choices(list(spec["mix"]), weights=list(spec["mix"].values()), k=spec["count"])
    priorities = rng.choices([int(p) for p in spec["priorities"]], weights=list(spec["priorities"].values()),
                             k=spec["count"])
    began = time.time()
    for number, (kind, priority) in enumerate(zip(kinds, priorities)):
        if spec["rate"]:
            time.sleep(max(0, began + number / spec["rate"] - time.time()))
        current_app.send_task("diagnostics.load", args=[spec["run"], kind, time.time(), spec["url"], spec["cpu_ms"]],
                              queue=spec["queue"], priority=priority)
    return {"sent": spec["count"], "seconds": time.time() - began}


@action
def marks_for(seconds: float, key: str = "loadtest:marks") -> int:
    """diagnostics.mark every 0.1 s for `seconds`; then keeps [start time, pid] of each that ran in
    Redis under `key` (the load test reads how long the worker did not consume)."""
    from allianceauth.utils.cache import get_redis_client
    from diagnostics import tasks

    end = time.time() + seconds
    while time.time() < end:
        tasks.mark.apply_async(args=["loadtest-mark"])
        time.sleep(0.1)
    time.sleep(3)
    events = [json.loads(e) for e in get_redis_client().lrange(tasks.EVENTS, 0, -1)]
    marks = sorted([e["time"], e["pid"]] for e in events if e["label"] == "loadtest-mark" and e["event"] == "start")
    get_redis_client().set(key, json.dumps(marks))
    return len(marks)


@action
def grow_a_worker(mib: int) -> bool:
    """One diagnostics.hold_memory task of `mib` MiB: the worker that runs it keeps the memory."""
    from diagnostics import tasks

    tasks.hold_memory.apply_async(args=["loadtest-grow", mib])
    return True


# Faults set up in the broker.

def broker_client() -> redis.Redis:
    return redis.Redis.from_url(settings.BROKER_URL)


@action
def malformed_messages() -> bool:
    """Messages no worker can run, onto priority 5 of `celery` and `cpu`: not JSON, not an
    envelope, a body that is not base64, an empty body, a body that is not JSON; and a task no
    worker knows."""
    def envelope(body, tag):
        return json.dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                           "headers": {"task": "diagnostics.mark", "id": tag, "lang": "py"},
                           "properties": {"body_encoding": "base64", "delivery_tag": tag, "priority": 5,
                                          "delivery_info": {"exchange": "", "routing_key": "celery"}}})

    broker = broker_client()
    for queue in (bucket_key("celery", 5), bucket_key("cpu", 5)):
        broker.lpush(queue, b"\xff not json at all", json.dumps([1, 2, 3]), envelope("!!!notbase64", f"{queue}-1"),
                     envelope("!!!", f"{queue}-2"), envelope(base64.b64encode(b"not json").decode(), f"{queue}-3"))
    current_app.send_task("no.such.task", args=[1])
    return True


@action
def fake_dead_consumer(sweepers: int = 8) -> dict:
    """A consumer takes every queued message of `celery`, as a worker does, and dies (its lease
    is gone); then `sweepers` workers sweep at the same instant. What was taken, what each sweep
    returned, what is queued and still held after."""
    from myauth import lease as leases

    client, dead = broker_client(), "test-dead-consumer"
    lease, held = leases.LEASE_PREFIX + dead, leases.HELD_PREFIX + dead
    lists = [bucket_key("celery", priority) for priority in range(10)]
    client.set(lease, "{}", px=60000)
    fetch = client.register_script(leases.FETCH)
    taken = 0
    while fetch(keys=[lease, held, leases.UNACKED, *lists], args=["1"] * len(lists)):
        taken += 1
    client.delete(lease)
    start, returned = threading.Barrier(sweepers), []

    def sweep():
        sweeper = broker_client()
        start.wait()
        returned.append(leases.sweep(sweeper, sweeper.register_script(leases.HAND_BACK)))

    threads = [threading.Thread(target=sweep) for _ in range(sweepers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"taken": taken, "returned": returned, "queued": sum(client.llen(key) for key in lists),
            "left_held": client.hlen(held)}


@action
def malformed_records() -> bool:
    """Leases and held records that are wrong: a lease of the wrong type, one that never expires, a
    held record of a message that does not exist, a held record that is not a hash."""
    from myauth import lease as leases

    client = broker_client()
    client.hset(leases.LEASE_PREFIX + "bad-type", "not", "a lease")
    client.set(leases.LEASE_PREFIX + "never-expires", "{}")
    client.hset(leases.HELD_PREFIX + "ghost", "no-such-delivery-tag", bucket_key("celery", 5))
    client.set(leases.HELD_PREFIX + "junk", "not a hash of held messages")
    return True


# Reading what the stack's code uses (in the worker container: what the worker runs with).

@action
def lease_settings() -> dict:
    """The lease's keys and timings, as lease.py has them."""
    from myauth import lease

    return {name: getattr(lease, name) for name in ("LEASE_PREFIX", "HELD_PREFIX", "UNACKED", "LEASE_SECONDS",
                                                    "BEAT_SECONDS")}


@action
def fetch_hook() -> dict:
    """The variable that makes a worker stop right after its first fetch, and the file it writes."""
    from diagnostics.apps import HELD_AFTER_FETCH, HOLD_AFTER_FETCH

    return {"variable": HOLD_AFTER_FETCH, "file": str(HELD_AFTER_FETCH)}


@action
def counting_cost(number: int = 200000) -> float:
    """Seconds that counting one task's outcome costs (myauth/task_counts.py)."""
    from myauth import task_counts

    class Task:
        name = "diagnostics.esi"

    return timeit.timeit(lambda: task_counts.count("succeeded", Task), number=number) / number


# Reading the database.

@action
def rows_written(prefix: str) -> list:
    """[distinct labels, rows] of the diagnostics rows whose label starts with `prefix`."""
    from diagnostics.models import TaskRow

    rows = TaskRow.objects.filter(label__startswith=prefix)
    return [rows.values("label").distinct().count(), rows.count()]


@action
def count_rows() -> dict:
    """{table: rows} of every table of the stack's database."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = [row[0] for row in cursor.fetchall()]
        counts = {}
        for table in tables:
            cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
            counts[table] = cursor.fetchone()[0]
    return counts


@action
def eve_models() -> int:
    """How many EVE characters, corporations and alliances the database holds."""
    from allianceauth.eveonline.models import EveAllianceInfo, EveCharacter, EveCorporationInfo

    return sum(model.objects.count() for model in (EveAllianceInfo, EveCharacter, EveCorporationInfo))


# Members: real Alliance Auth data for the tests that must not lose it (backup, restore, upgrade).

def member_names(name: str, character_id: int) -> dict:
    return {"username": f"{name.lower()}-admin", "group": f"{name} Group", "state": f"{name} State",
            "character": f"{name} Pilot", "corporation": f"{name} Corp", "character_id": character_id}


@action
def create_member(name: str, character_id: int, password: str) -> bool:
    """A superuser with this password, in a group, whose EVE character is a member of a state."""
    from allianceauth.authentication.models import State
    from allianceauth.eveonline.models import EveCharacter
    from django.contrib.auth.models import Group, User

    names = member_names(name, character_id)
    user = User.objects.create_superuser(names["username"], f"{names['username']}@example.com", password)
    group = Group.objects.create(name=names["group"])
    user.groups.add(group)
    character = EveCharacter.objects.create(
        character_id=character_id, character_name=names["character"], corporation_id=98000001,
        corporation_name=names["corporation"], corporation_ticker=name[:4].upper())
    state = State.objects.create(name=names["state"], priority=77)
    state.member_characters.add(character)
    return True


@action
def find_member(name: str, character_id: int, password: str) -> dict:
    """What of the member the database holds."""
    from allianceauth.authentication.models import State
    from allianceauth.eveonline.models import EveCharacter
    from django.contrib.auth.models import User

    names = member_names(name, character_id)
    user = User.objects.filter(username=names["username"]).first()
    state = State.objects.filter(name=names["state"]).first()
    return {
        "user": bool(user), "password": bool(user and user.check_password(password)),
        "groups": sorted(user.groups.values_list("name", flat=True)) if user else [],
        "state members": sorted(state.member_characters.values_list("character_name", flat=True)) if state else [],
        "characters": list(EveCharacter.objects.filter(character_id=character_id)
                           .values_list("character_name", flat=True)),
    }


@action
def delete_member(name: str, character_id: int) -> bool:
    from allianceauth.authentication.models import State
    from allianceauth.eveonline.models import EveCharacter
    from django.contrib.auth.models import Group, User

    names = member_names(name, character_id)
    User.objects.filter(username=names["username"]).delete()
    Group.objects.filter(name=names["group"]).delete()
    State.objects.filter(name=names["state"]).delete()
    EveCharacter.objects.filter(character_id=character_id).delete()
    return True
