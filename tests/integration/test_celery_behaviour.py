"""The stack's Celery promises, proven on the running test stack (small overlay).

Each test starts from no queued task and clears the diagnostics records; tests that stop or
kill a container wait until it is healthy again before they finish.
"""

import pytest


def labels(events, prefix):
    return [e["label"] for e in events if e["event"] == "start" and e["label"].startswith(prefix)]


def test_priorities_a_backlog_queued_while_the_worker_is_stopped_runs_high_then_default_then_low(diag):
    diag.supervisor("stop", "worker:*")
    try:
        low = [("diagnostics.sleep", [f"low-{i:02d}", 0.2], {"priority": 7 + i % 3}) for i in range(40)]
        high = [("diagnostics.sleep", [f"high-{i:02d}", 0.2], {"priority": 1 + i % 3}) for i in range(10)]
        default = [("diagnostics.sleep", [f"default-{i:02d}", 0.2], {}) for i in range(10)]
        diag.enqueue(low + high + default)
        buckets = {p: tasks.count("diagnostics.sleep") for p, tasks in diag.queued_tasks().items()}
        # A task sent with no priority waits in Alliance Auth's default bucket 5, not the top one.
        assert buckets[0] == 0 and buckets[5] == 10, buckets
        assert sum(buckets[p] for p in (1, 2, 3)) == 10 and sum(buckets[p] for p in (7, 8, 9)) == 40
    finally:
        diag.supervisor("start", "worker:*")

    events = diag.wait_until_ended([c[1][0] for c in low + high + default])
    order = [label.split("-")[0] for label in labels(events, "") if label.split("-")[0] in ("high", "default", "low")]
    # Everything was queued before the worker consumed anything, so its prefetch holds the
    # highest buckets only: no low task may start before the last high or default one.
    assert order == ["high"] * 10 + ["default"] * 10 + ["low"] * 40, order
    assert {e["priority"] for e in events if e["label"].startswith("default")} == {5}


# How many low-priority tasks can start before high-priority ones queued while every slot is
# busy: none. Tasks are acknowledged late, so the running ones fill the prefetch window
# (worker_prefetch_multiplier 1 x slots) and a worker takes its next message only when a slot
# frees, by then the highest one. (With early acks the running tasks would no longer count and
# prefork would reserve one low per process ahead of the highs.)
POOLS = {
    "gevent": ("celery", "WORKER_CONCURRENCY"),
    "prefork": ("cpu", "PREFORK_CONCURRENCY"),
}


def priority_order(events, event):
    """"high" or "low" for each such task's `event`, in the order they happened."""
    return [e["label"].split("-")[0] for e in events if e["event"] == event and e["label"].split("-")[0] in ("high", "low")]


@pytest.mark.parametrize("pool", POOLS)
def test_priorities_while_every_slot_is_busy_highs_queued_later_start_before_any_low(diag, sizes, pool):
    queue, size = POOLS[pool]
    slots = int(sizes[size])
    busy = [("diagnostics.sleep", [f"busy-{i:02d}", 10], {"priority": 5, "queue": queue}) for i in range(slots)]
    diag.enqueue(busy)
    diag.wait_for(lambda: len(diag.started("busy")) == slots, 30, "every slot to be busy")
    low = [("diagnostics.mark", [f"low-{i:02d}"], {"priority": 8, "queue": queue}) for i in range(30)]
    high = [("diagnostics.mark", [f"high-{i:02d}"], {"priority": 2, "queue": queue}) for i in range(10)]
    diag.enqueue(low + high)
    assert not [label for label in diag.ended_labels() if label.startswith("busy")], "slots freed before the highs were queued"

    events = diag.wait_until_ended([c[1][0] for c in busy + low + high])
    received, started = priority_order(events, "received"), priority_order(events, "start")
    assert received == ["high"] * 10 + ["low"] * 30, received
    # On a pool of several processes the last high and the next low start on different
    # processes, in whichever order the kernel runs them; so only the first start is certain.
    assert started[0] == "high", started


def test_queue_once_declines_a_duplicate_gracefully_and_runs_it_once(diag):
    first, duplicate, other = diag.enqueue([
        ("diagnostics.once", ["same", 3], {}),
        ("diagnostics.once", ["same", 3], {}),
        ("diagnostics.once", ["other", 0], {}),
    ])
    assert first and other and duplicate is None
    diag.wait_until_ended(["same", "other"])
    assert [e["label"] for e in diag.started()].count("same") == 1

    # Once it has finished, the same call can be queued again.
    again, = diag.enqueue([("diagnostics.once", ["same", 0], {})])
    assert again is not None
    diag.wait_for(lambda: [e["label"] for e in diag.started()].count("same") == 2, 30, "the second run")


def test_queue_once_lock_is_released_when_the_task_fails(diag):
    failing, = diag.enqueue([("diagnostics.once", ["fails", 0, True], {})])
    diag.wait_for(lambda: diag.started("fails"), 30, "the failing task to start")
    diag.wait_for(lambda: f"diagnostics.once[{failing}] raised unexpected" in diag.logs("worker"), 30, "the failure")
    retry, = diag.enqueue([("diagnostics.once", ["fails", 0, False], {})])
    assert retry is not None
    diag.wait_until_ended(["fails"])


def test_queue_once_task_of_a_killed_worker_keeps_its_lock_until_it_has_run_again(diag):
    call = ("diagnostics.once", ["killed", 10], {})
    diag.enqueue([call])
    diag.wait_for(lambda: diag.started("killed"), 30, "the task to start")
    started_at = diag.container_state("worker")["StartedAt"]
    diag.crash("worker")

    # The task will run again (acks late: a live worker hands it back once the dead one's lease
    # expires), so its lock, taken at enqueue, rightly still declines a duplicate meanwhile.
    duplicate, = diag.enqueue([call])
    assert duplicate is None
    lock_keys = diag.redis("-n", "1", "--scan", "--pattern", "*qo_diagnostics.once*killed*").split()
    assert len(lock_keys) == 1
    diag.wait_restarted("worker", started_at)

    # Redelivered, it runs to its end and releases the lock: the same call is accepted again.
    diag.wait_until_ended(["killed"], 120)
    assert diag.runs()["killed"] == 2
    diag.wait_for(lambda: not diag.redis("-n", "1", "--scan", "--pattern", "*qo_diagnostics.once*killed*").split(),
                  10, "the lock to be released")
    again, = diag.enqueue([call])
    assert again is not None
    diag.wait_for(lambda: diag.runs()["killed"] == 3, 60, "the new call to run")


def test_memmon_restarts_only_the_worker_over_its_limit_after_its_tasks_finish(diag, memmon_limit_mib):
    before = diag.supervisor_pids()
    diag.enqueue([("diagnostics.sleep", ["running", 12], {})])
    diag.wait_for(lambda: diag.started("running"), 30, "the long task to start")
    diag.enqueue([("diagnostics.hold_memory", ["grow", memmon_limit_mib], {})])
    diag.wait_for(lambda: "grow" in diag.ended_labels(), 30, "the memory to grow")
    queued = [("diagnostics.mark", [f"queued-{i:02d}"], {}) for i in range(30)]
    diag.enqueue(queued)

    after = diag.wait_for(lambda: (p := diag.supervisor_pids()).get("worker:worker_00", 0) not in (0, before["worker:worker_00"]) and p,
                          90, "memmon to restart worker_00")
    assert after["worker_services:worker_services_00"] == before["worker_services:worker_services_00"]
    assert after["memmon"] == before["memmon"]
    assert "Restarting worker:worker_00" in diag.logs("worker")

    events = diag.wait_until_ended(["running"] + [c[1][0] for c in queued])
    running = [e for e in events if e["label"] == "running"]
    assert {e["pid"] for e in running} == {before["worker:worker_00"]}, "the running task ended on the old process"
    assert all(len(labels(events, c[1][0])) == 1 for c in queued)
    diag.wait_healthy("worker")


def test_prefork_child_over_max_memory_per_child_is_replaced_after_its_task(diag, sizes):
    limit_mib = int(sizes["PREFORK_MAX_MEMORY_PER_CHILD"]) // 1024
    diag.enqueue([("diagnostics.hold_memory", ["grow", limit_mib + 32], {"queue": "cpu"})])
    events = diag.wait_until_ended(["grow"], 60)
    grown_pid = next(e["pid"] for e in events if e["label"] == "grow")

    def children():
        nodes = diag.stack.celery_stats("worker-cpu")
        return next((s["pool"]["processes"] for node, s in nodes.items() if node.startswith("cpu@")), [])

    replaced = diag.wait_for(lambda: (c := children()) and grown_pid not in c and len(c) == int(sizes["PREFORK_CONCURRENCY"]) and c,
                             60, "the grown child to be replaced")
    assert grown_pid not in replaced
    later = [("diagnostics.mark", [f"after-{i}"], {"queue": "cpu"}) for i in range(4)]
    diag.enqueue(later)
    events = diag.wait_until_ended([c[1][0] for c in later], 60)
    assert grown_pid not in {e["pid"] for e in events if e["label"].startswith("after")}


def test_a_gevent_worker_process_shares_one_django_cache_between_its_tasks(diag):
    """Django keeps its cache objects per thread, which in a gevent worker was one per task
    (myauth/greenlets.py). Each diagnostics task records which cache object it used."""
    batch = [("diagnostics.mark", [f"cache-{i:03d}"], {}) for i in range(200)]
    diag.enqueue(batch)
    events = [e for e in diag.wait_until_ended([c[1][0] for c in batch]) if e["label"].startswith("cache-")]
    used = {}
    for event in events:
        used.setdefault(event["pid"], set()).add(event["cache"])
    assert used and all(len(caches) == 1 for caches in used.values()), {pid: len(c) for pid, c in used.items()}


@pytest.mark.parametrize("how", [("stop",), ("restart",)])
def test_graceful_shutdown_finishes_running_tasks_and_keeps_queued_ones(diag, sizes, how):
    concurrency = int(sizes["WORKER_CONCURRENCY"])
    # Long enough to outlast the stop by far: a shutdown that kills them cannot pass unnoticed.
    running = [("diagnostics.sleep", [f"running-{i:02d}", 15], {}) for i in range(concurrency)]
    waiting = [("diagnostics.mark", [f"waiting-{i:02d}"], {}) for i in range(40)]
    diag.enqueue(running)
    diag.wait_for(lambda: len(diag.started("running")) == concurrency, 30, "every slot to be busy")
    diag.enqueue(waiting)

    diag.compose(*how, "worker")
    running_labels = {c[1][0] for c in running}
    assert running_labels <= diag.ended_labels(), "a running task did not finish before the worker stopped"
    if how == ("stop",):
        assert diag.container_state("worker")["ExitCode"] == 0
        diag.compose("start", "worker")

    events = diag.wait_until_ended(running_labels | {c[1][0] for c in waiting})
    starts = labels(events, "running") + labels(events, "waiting")
    assert sorted(starts) == sorted(running_labels | {c[1][0] for c in waiting}), "a task ran twice or never"
    diag.wait_healthy("worker")


def test_beat_fires_on_time_and_a_killed_beat_does_not_rerun_the_slot(diag):
    def runs():
        return [e for e in diag.events() if e["label"] == "beat" and e["event"] == "start"]

    first = diag.wait_for(runs, 75, "beat's every-minute entry to run")[0]
    slot = int(first["time"] // 60)
    assert first["time"] - slot * 60 < 10, f"ran {first['time'] - slot * 60:.1f} s after its minute began"

    started_at = diag.container_state("beat")["StartedAt"]
    diag.crash("beat")
    diag.wait_restarted("beat", started_at)
    diag.wait_for(lambda: any(int(e["time"] // 60) > slot for e in runs()), 90, "the next minute's run")
    per_slot = {}
    for event in runs():
        per_slot[int(event["time"] // 60)] = per_slot.get(int(event["time"] // 60), 0) + 1
    assert set(per_slot.values()) == {1}, f"runs per minute: {per_slot}"
