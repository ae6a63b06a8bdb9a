"""Delivery without loss or repeats, proven on the running test stack with the production lease
timings (README, "Guarantees"; the mechanism is myauth/broker.py and myauth/lease.py).

A message is always either in its priority list or held by one live worker process; a worker's
lease is renewed by a thread of its own, and the messages of a process whose lease expired are
handed back by any live worker.
"""

import time

import pytest

from stackctl.stack import ROOT
from tests.integration.conftest import RERUN_WITHIN_SECONDS
from tests.integration.diagnostics import calls, labels


def starts_of(events: list, label: str) -> list:
    return [e for e in events if e["event"] == "start" and e["label"] == label]


def test_a_worker_killed_right_after_it_fetched_a_message_loses_nothing(diag, report):
    """The instant kombu's own transport loses a message in: popped off its list, not yet recorded."""
    hook = diag.stack.diagnostics("fetch-hook", service="worker")
    hold_variable, held_file = hook["variable"], hook["file"]
    diag.supervisor("stop", "worker:*")
    try:
        diag.enqueue([("diagnostics.mark", ["fetch-held"], {})])
        diag.compose("exec", "--detach", "-e", f"{hold_variable}=600", "worker", "celery", "-A", "myauth", "worker",
                     "--pool=gevent", "--concurrency=1", "--queues=celery", "--hostname=fetch-held@%h")
        tag = diag.wait_for(lambda: diag.compose("exec", "-T", "worker", "cat", held_file, check=False).stdout,
                            90, "the one-off worker to fetch the message")
        # Off its list and recorded as held by that process, in the same step. (Beat may have queued
        # its own diagnostics.mark meanwhile: only this message's label counts.)
        assert "fetch-held" not in diag.queued_labels()
        holders = [lease for lease, tags in diag.held().items() if tag in tags]
        assert len(holders) == 1, diag.held()
        pid = diag.run("worker", "pgrep", "-f", "fetch-held@").split()[0]
        diag.run("worker", "kill", "-KILL", pid)
        killed_at = time.time()
    finally:
        diag.compose("exec", "-T", "worker", "rm", "-f", held_file, check=False)
        diag.supervisor("start", "worker:*")

    events = diag.wait_until_ended(["fetch-held"], 90)
    starts = starts_of(events, "fetch-held")
    assert len(starts) == 1
    rerun_after = starts[0]["time"] - killed_at
    assert 0 < rerun_after <= RERUN_WITHIN_SECONDS
    assert holders[0] not in diag.held(), "the dead process's record was left behind"
    report(f"worker SIGKILLed right after fetching a message (recorded as held in the same step): "
           f"the message ran {rerun_after:.0f} s after the kill, once")


def test_a_task_with_a_countdown_past_the_visibility_timeout_runs_exactly_once(diag, sizes, report):
    visibility = int(sizes["BROKER_VISIBILITY_TIMEOUT"])
    countdown = visibility + 25  # past kombu's sweep too (broker.RESTORE_SWEEP_SECONDS)
    sent_at = time.time()
    diag.enqueue([("diagnostics.mark", ["countdown"], {"countdown": countdown})])
    # The worker holds it, under its lease, for the whole countdown: it is in no list.
    diag.wait_for(lambda: any(tags for tags in diag.held().values()), 30, "the worker to hold the task")
    time.sleep(visibility + 12)
    assert diag.queued() == 0 and not diag.started("countdown"), "handed out again before it was due"

    events = diag.wait_until_ended(["countdown"], countdown + 30)
    starts = starts_of(events, "countdown")
    assert len(starts) == 1
    assert starts[0]["time"] >= sent_at + countdown - 1
    report(f"a task with a {countdown} s countdown (visibility timeout {visibility} s) ran once, "
           f"{starts[0]['time'] - sent_at - countdown:.1f} s after it was due")


def test_a_worker_whose_event_loop_is_blocked_keeps_its_lease_and_its_tasks(diag, report):
    lease_seconds = diag.lease_settings()["LEASE_SECONDS"]
    gevent_pid = diag.supervisor_pids()["worker:worker_00"]
    handed_back_before = diag.logs("worker").count("Handed back")
    held = calls("diagnostics.sleep", "blocked-held", 5, 1)
    burn = ("diagnostics.burn_cpu", ["blocked-burn", lease_seconds + 10], {})
    diag.enqueue(held)
    diag.wait_for(lambda: len(diag.started("blocked-held")) == 5, 30, "the held tasks to start")
    diag.enqueue([burn])
    diag.wait_for(lambda: diag.started("blocked-burn"), 30, "the CPU-bound task to start")
    began = time.time()
    lowest = lease_seconds * 1000
    while time.time() - began < lease_seconds + 5:  # longer than the lease lasts unrenewed
        leases = {lease: ttl for lease, ttl in diag.leases().items() if f".{gevent_pid}." in lease}
        assert len(leases) == 1, f"the blocked worker's lease is gone: {diag.leases()}"
        lowest = min(lowest, *leases.values())
        time.sleep(1)

    events = diag.wait_until_ended(labels(held) | {"blocked-burn"}, 60)
    runs = diag.runs()
    assert all(runs[label] == 1 for label in labels(held) | {"blocked-burn"}), runs
    assert diag.supervisor_pids()["worker:worker_00"] == gevent_pid
    assert diag.logs("worker").count("Handed back") == handed_back_before
    blocked = max(e["time"] for e in events if e["label"] == "blocked-burn") - min(
        e["time"] for e in events if e["label"] == "blocked-burn")
    report(f"gevent worker's event loop blocked {blocked:.0f} s by a CPU-bound task (lease {lease_seconds} s): "
           f"its lease never had less than {lowest / 1000:.0f} s left; its 5 other tasks ran once")


def test_workers_sweeping_a_dead_consumer_at_once_hand_back_each_message_once(diag, report):
    batch = calls("diagnostics.mark", "swept", 300)
    diag.supervisor("stop", "worker:*")
    try:
        diag.enqueue(batch)
        result = diag.stack.diagnostics("fake-dead-consumer")
    finally:
        diag.supervisor("start", "worker:*")
    # Beat may queue a periodic task while the workers are stopped: the fake consumer takes it too.
    assert result["taken"] >= len(batch)
    assert result["queued"] == result["taken"] and result["left_held"] == 0, result
    diag.wait_until_ended(labels(batch), 120)
    runs = diag.runs()
    assert all(runs[label] == 1 for label in labels(batch)), {label: n for label, n in runs.items() if n != 1}
    report(f"a dead consumer's {len(batch)} messages swept by 8 workers at once (these returned "
           f"{sorted(result['returned'], reverse=True)}, the stack's own the rest): each queued once, ran once")


def test_malformed_leases_and_records_that_point_at_nothing_are_logged_and_cleared(diag):
    settings = diag.lease_settings()
    before, cpu_started_at = diag.supervisor_pids(), diag.container_state("worker-cpu")["StartedAt"]
    queued = calls("diagnostics.mark", "beside-bad-records", 3)
    diag.supervisor("stop", "worker:*")
    try:
        diag.enqueue(queued)
        diag.stack.diagnostics("malformed-records")
        time.sleep(2 * settings["BEAT_SECONDS"] + 1)  # every live worker has swept at least once
        held, leases = diag.held(), diag.leases()
    finally:
        diag.supervisor("start", "worker:*")
    diag.wait_until_ended(labels(queued), 60)

    assert "ghost" not in held and "junk" not in held, held
    # A lease without a TTL gets one: it expires unless a live worker renews it. Not a lease: gone.
    assert 0 < leases.get("never-expires", 0) <= settings["LEASE_SECONDS"] * 1000, leases
    assert "bad-type" not in leases, leases
    log = diag.logs("worker") + diag.logs("worker-cpu")
    assert "no-such-delivery-tag of expired lease" in log and "has no readable payload; cleared" in log
    assert "junk is not a hash of held messages" in log
    assert "never-expires is malformed (TTL -1 ms)" in log and "bad-type is malformed (a hash" in log
    assert all(diag.runs()[label] == 1 for label in labels(queued))
    assert diag.supervisor_pids()["worker_services:worker_services_00"] == before["worker_services:worker_services_00"]
    assert diag.container_state("worker-cpu")["StartedAt"] == cpu_started_at, "the prefork worker restarted"


def largest_gevent_concurrency() -> int:
    import yaml

    return max(int(yaml.safe_load(path.read_text())["services"]["worker"]["environment"]["WORKER_CONCURRENCY"])
               for path in (ROOT / "config" / "overlays").glob("*.yaml"))


def check_soak(events: list, kills: list) -> tuple:
    """A soak's runs against its kills [(time, labels its worker processes held), ...]. Returns
    ({label: [seconds from each kill that held it to its next start]}, [problem, ...]): every
    label ran to its end, and only a label held at a kill ran again, once per such kill. (A task
    that had recorded its end but was not yet acknowledged was held: it runs again, by design.)"""
    by_label, problems, reran = {}, [], {}
    for event in events:
        by_label.setdefault(event["label"], []).append(event)
    for label, runs in by_label.items():
        starts = sorted(e["time"] for e in runs if e["event"] == "start")
        if not any(e["event"] == "end" for e in runs):
            problems.append(f"{label} never ran to its end")
        cut = [killed_at for killed_at, held in kills if label in held]
        if len(starts) > 1 + len(cut):
            problems.append(f"{label} started {len(starts)} times but was held at {len(cut)} kill(s)")
        for killed_at in cut:
            reran.setdefault(label, []).append(min((t for t in starts if t > killed_at), default=float("inf")) - killed_at)
    return reran, problems


@pytest.fixture
def esi_stub(diag):
    diag.compose("--profile", "loadtest", "up", "--detach", "--no-deps", "esi-stub")
    # ESI calls of about a second: 60 greenlets then run about 50 tasks a second, slow enough that
    # a kill lands while the worker is busy even when the test's own docker calls are slow.
    yield "http://esi-stub:8080/?ms=1000&jitter=300"
    diag.compose("--profile", "loadtest", "rm", "--stop", "--force", "esi-stub")


def test_a_soak_with_the_worker_killed_repeatedly_runs_every_task_and_repeats_only_those_it_held(
        diag, env_file, tmp_path, esi_stub, request, report):
    full = request.config.getoption("--full-soak")
    tasks, kills_wanted = (10000, 6) if full else (3000, 2)
    concurrency = largest_gevent_concurrency()
    diag.up_worker(diag.with_worker_environment(env_file, tmp_path, WORKER_CONCURRENCY=str(concurrency)))
    try:
        batch = [("diagnostics.esi_update", [f"soak-{i:05d}", esi_stub], {"priority": (2, 5, 7)[i % 3]})
                 for i in range(tasks)]
        began = time.time()
        kills, dead = [], set()
        # One part of the batch per kill, and one after the last: each kill finds work queued and
        # running however long the test took to get there.
        parts = [batch[i::kills_wanted + 1] for i in range(kills_wanted + 1)]
        for k, part in enumerate(parts, start=1):
            diag.enqueue(part)
            if k > kills_wanted:
                break
            diag.wait_for(lambda: len(labels(part) & diag.ended_labels()) >= len(part) // 4, 600,
                          f"a quarter of part {k} to have run")
            container = diag.run("worker", "hostname").strip()
            started_at = diag.container_state("worker")["StartedAt"]
            leases = {lease for lease in diag.leases() if lease.startswith(f"{container}.")} - dead  # host.pid.random
            killed_at = diag.crash("worker")
            # What its processes held at their death, read from the broker before a live worker
            # hands it back (their leases last LEASE_SECONDS more).
            kills.append((killed_at, diag.labels_held(leases)))
            dead |= leases
            diag.wait_for(lambda: diag.container_state("worker")["StartedAt"] != started_at, 60, "docker to restart it")
        diag.wait_healthy("worker")
        events = diag.wait_until_ended(labels(batch), 900)
    finally:
        (tmp_path / "worker.log").write_text(diag.logs("worker"))  # gone once the worker is recreated
        diag.up_worker(env_file)
    elapsed = time.time() - began

    reran, problems = check_soak([e for e in events if e["label"].startswith("soak-")], kills)
    assert not problems, (problems[:20], f"kills: {kills}", f"worker log: {tmp_path / 'worker.log'}",
                          [e for e in events if any(e["label"] in problem for problem in problems[:5])])
    assert all(held for _, held in kills), ("a kill found the worker holding nothing", [len(held) for _, held in kills])
    slowest = max((seconds for delays in reran.values() for seconds in delays), default=0)
    assert slowest <= RERUN_WITHIN_SECONDS, {label: delays for label, delays in reran.items()
                                             if max(delays) > RERUN_WITHIN_SECONDS}
    report(f"soak ({'full' if full else 'short'}): {tasks} ESI-like tasks at {concurrency} greenlets, the worker "
           f"container SIGKILLed {len(kills)} times: every task ran to its end in {elapsed:.0f} s; only the "
           f"{len(reran)} its processes held at a kill ran again ({', '.join(sorted(reran)[:6])}"
           f"{', ...' if len(reran) > 6 else ''}; {sum(len(held) for _, held in kills)} held at the kills), "
           f"each at most {slowest:.0f} s after the kill")
