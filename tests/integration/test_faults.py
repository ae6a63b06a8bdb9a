"""Faults the stack survives without losing a task, proven on the running test stack.

Every task carries a unique label and records its start and end; each test compares the labels
it sent with the ones that ran. The delivery policy under test (README, "Guarantees"): a task a
worker process held when it died runs again within RERUN_WITHIN_SECONDS of its death, once its
lease has expired and a live worker has handed the task back (myauth/lease.py); nothing else
runs twice.
"""

import json
import subprocess
import time
from datetime import datetime, timezone

import environment
import requests

from stackctl import check_sizing
from stackctl.stack import ROOT
from tests.integration.conftest import RERUN_WITHIN_SECONDS
from tests.integration.diagnostics import Poller, Stream, calls, label_of, labels


def test_a_killed_worker_comes_back_by_itself_and_every_task_it_held_runs_again(diag, sizes, report):
    slots = int(sizes["WORKER_CONCURRENCY"])
    held = calls("diagnostics.sleep", "killed-held", slots, 5)
    queued = calls("diagnostics.mark", "killed-queued", 30)
    diag.enqueue(held + queued)
    diag.wait_for(lambda: len(diag.started("killed-held")) == slots, 30, "every slot to be busy")
    started_at = diag.container_state("worker")["StartedAt"]

    killed_at = diag.crash("worker")
    diag.wait_restarted("worker", started_at)
    healthy_after = time.time() - killed_at
    events = diag.wait_until_ended(labels(held + queued), RERUN_WITHIN_SECONDS + 60)

    runs = diag.runs()
    assert all(runs[label] == 1 for label in labels(queued)), "a task still queued at the kill ran twice"
    # Every task the worker had started was killed with it and ran again, to its end.
    rerun_starts = [e["time"] for e in events if e["event"] == "start" and e["label"] in labels(held) and e["time"] > killed_at]
    assert len(rerun_starts) == slots and all(runs[label] == 2 for label in labels(held))
    recovered_after = max(rerun_starts) - killed_at
    assert recovered_after <= RERUN_WITHIN_SECONDS
    assert not set(diag.held()) - set(diag.leases()), "a dead process's held messages were left behind"
    report(f"worker SIGKILL: container healthy again after {healthy_after:.0f} s; its {slots} running tasks ran "
           f"again {min(rerun_starts) - killed_at:.0f}-{recovered_after:.0f} s after the kill; none lost, "
           f"nothing left behind")


def oom_kills(diag) -> int:
    """The worker container's OOM-kill count, from its memory cgroup (v1 or v2)."""
    counters = diag.compose("exec", "-T", "worker", "sh", "-c",
                            "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null; true").stdout
    return int(next(line.split()[1] for line in counters.splitlines() if line.startswith("oom_kill ")))


def supervisord_time(line: str) -> float:
    """The time of a supervisord log line ("worker-1  | 2026-12-02 19:51:37,824 WARN ..."; UTC)."""
    stamp = line.split("|", 1)[1].strip()[:23]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()


def test_a_worker_the_kernel_oom_kills_is_restarted_and_every_task_it_held_runs_again(diag, report):
    container_limit_mib = diag.stack.inspect("worker")["HostConfig"]["Memory"] // 2**20
    before, kills_before = diag.supervisor_pids(), oom_kills(diag)
    started_at = diag.container_state("worker")["StartedAt"]
    held = calls("diagnostics.sleep", "oom-held", 10, 15)
    # A leak: each task keeps 128 MiB more in the worker process, one after the other (they do
    # not yield), until the kernel kills the biggest process of the container at its limit.
    # Enough steps to pass the limit alone, few enough that the ones still to run after the
    # kill fit in a fresh process. They grow a second apart, once the worker has fetched every
    # task, so that each leak that completed was acknowledged: were they all to grow at once,
    # every one would come back and kill the fresh process again.
    leaks = [("diagnostics.hold_memory", [f"oom-leak-{i:04d}", 128, 3 + i], {})
             for i in range(-(-container_limit_mib // 128))]

    diag.supervisor("stop", "memmon")
    try:
        diag.enqueue(held + leaks)
        diag.wait_for(lambda: diag.supervisor_pids().get("worker:worker_00") not in (None, before["worker:worker_00"]),
                      60, "the kernel to kill the leaking worker")
        assert oom_kills(diag) > kills_before
        exited = [line for line in diag.logs("worker").splitlines()
                  if "exited: worker_00 (terminated by SIGKILL; not expected)" in line]
        assert exited
        killed_at = supervisord_time(exited[-1])  # supervisord marks RUNNING only 10 s later
        # By then the fresh process may have started the held tasks again: judge by the kill's time.
        before_kill = [e for e in diag.events() if e["label"] in labels(held) and e["time"] < killed_at]
        assert len([e for e in before_kill if e["event"] == "start"]) == 10, "the held tasks were not all running"
        assert not [e for e in before_kill if e["event"] == "end"], "the kill came too late"
        assert diag.container_state("worker")["StartedAt"] == started_at, "the container itself was restarted"

        events = diag.wait_until_ended(labels(held + leaks), RERUN_WITHIN_SECONDS + 60)
        assert all(diag.runs()[label] == 2 for label in labels(held)), "a task killed with the worker did not run again"
        rerun_after = max(e["time"] for e in events if e["event"] == "start" and e["label"] in labels(held)) - killed_at
        assert rerun_after <= RERUN_WITHIN_SECONDS
        report(f"OOM kill of worker_00 (memmon off, a leak passing the {container_limit_mib} MiB container limit): "
               f"supervisord restarted it; the 10 tasks it was running ran again {rerun_after:.0f} s after the kill; "
               f"none lost")
    finally:
        diag.supervisor("start", "memmon")
        diag.supervisor("restart", "worker:*")  # drop what the leak still holds
    diag.wait_healthy("worker")


# appendfsync everysec: Redis writes its AOF every second, and postpones a write by up to 2 s
# more while an fsync is slow; what it acknowledged in that time is only in its memory.
FSYNC_WINDOW = 2.0


def test_a_redis_crash_loses_no_enqueue_older_than_the_fsync_window_and_everything_reconnects(diag, site, report):
    assert diag.redis("config", "get", "appendfsync").split() == ["appendfsync", "everysec"]
    held = calls("diagnostics.sleep", "redis-held", 10, 6)  # running on the gevent worker at the crash
    backlog = calls("diagnostics.sleep", "redis-queued", 100, 0.5, queue="cpu")  # queued: 2 prefork slots take 25 s
    diag.enqueue(held + backlog)
    diag.wait_for(lambda: len(diag.started("redis-held")) == 10, 30, "the held tasks to start")
    stream = diag.stack.diagnostics_in_background("stream-marks", seconds=25)
    time.sleep(10)  # the stream runs for a few seconds before the crash
    started_at = diag.container_state("redis")["StartedAt"]
    queued_at_crash = sum(diag.queue_lengths("cpu").values())
    killed_at = diag.crash("redis")
    output, _ = stream.communicate(timeout=120)
    result = json.loads(output.strip().splitlines()[-1])
    sent = dict(result["sent"])
    diag.wait_restarted("redis", started_at)

    assert min(sent.values()) < killed_at - FSYNC_WINDOW, "the crash came before the stream was under way"
    assert max(sent.values()) > killed_at + 1, "enqueues did not resume after the crash"
    assert queued_at_crash > 20, "the backlog was gone before the crash"
    expected = set(sent) | labels(held + backlog)
    diag.wait_for(lambda: not diag.queued() and not diag.in_flight(), 120, "the workers to drain everything")
    lost = expected - diag.ended_labels()
    # (A send's time is taken when its reply arrived, which can be a moment after kill() returned.)
    assert all(killed_at - FSYNC_WINDOW <= sent[label] <= killed_at + 0.5 for label in lost), \
        {label: round(sent.get(label, 0) - killed_at, 2) for label in lost}
    assert labels(held) <= diag.ended_labels(), "a task running during the crash never completed"
    assert labels(backlog) <= diag.ended_labels(), "a task queued at the crash did not survive it"
    diag.wait_healthy("web")
    assert requests.get(f"{site}/account/login/", timeout=30).status_code == 200
    refused = ", ".join(sorted({error.split("(")[0] for _, _, error in result["failed"]})) or "none"
    report(f"Redis SIGKILL with {queued_at_crash} tasks queued and a stream of {len(sent)} acknowledged "
           f"enqueues: every queued task survived; {len(lost)} enqueue(s) lost"
           f"{f', all sent within {FSYNC_WINDOW:.0f} s before the kill' if lost else ''}; {len(result['failed'])} "
           f"enqueue(s) during the outage raised an error to the caller ({refused}); workers and web "
           f"reconnected by themselves")


def mariadb(diag, statement: str) -> str:
    """A statement run in the mariadb container as the stack's database user; its rows, tab-separated."""
    query = 'MYSQL_PWD="$MARIADB_PASSWORD" mariadb --protocol=tcp --host=127.0.0.1 --user="$MARIADB_USER" ' \
            f'--batch --skip-column-names -e "{statement}"'
    return diag.run("mariadb", "sh", "-c", query)


def mariadb_status(diag, name: str) -> int:
    """A counter of MariaDB's since it started, over all clients: Connections (opened), Aborted_clients
    (closed by the client without saying goodbye)."""
    return int(mariadb(diag, f"SHOW GLOBAL STATUS LIKE \'{name}\'").split()[-1])


def test_the_gevent_workers_pool_has_a_connection_for_each_greenlet(diag, sizes, report):
    """The pool is sized at worker_init; Django's system checks had made one with the library's
    defaults (10 and 10 more) before it (myauth/database.py)."""
    slots = int(sizes["WORKER_CONCURRENCY"])
    holds = calls("diagnostics.hold_database", "pool-hold", slots, 8)
    diag.enqueue(holds)
    diag.wait_for(lambda: len(diag.started("pool-hold")) == slots, 60, "every greenlet to start its task")
    most, deadline = 0, time.monotonic() + 5  # each holds its connection for 8 s
    while most < slots and time.monotonic() < deadline:
        most = max(most, int(mariadb(diag, "SELECT COUNT(*) FROM information_schema.processlist "
                                           "WHERE info LIKE 'SELECT SLEEP%'")))
    diag.wait_until_ended(labels(holds), 60)
    assert most == slots, f"at most {most} of {slots} greenlets had a database connection at once"
    report(f"{slots} greenlets held {most} database connections at once")


def test_the_gevent_worker_reuses_database_connections_across_its_tasks(diag, sizes, report):
    """Each task used to open (and TLS-handshake) a connection of its own (myauth/database.py)."""
    left_open = calls("diagnostics.write_row_left_uncommitted", "pool-uncommitted", 1)
    writes = calls("diagnostics.write_row", "pool-row", 500)
    diag.enqueue(left_open)
    diag.wait_until_ended(labels(left_open), 60)
    before = {name: mariadb_status(diag, name) for name in ("Connections", "Questions")}
    diag.enqueue(writes)
    diag.wait_until_ended(labels(writes), 180)
    opened = mariadb_status(diag, "Connections") - before["Connections"]
    statements = (mariadb_status(diag, "Questions") - before["Questions"]) / len(writes)
    assert diag.rows_written("pool-row-") == (500, 500)
    # The pool hands connections out in turn, so later writes reused the one left in a transaction:
    # had the pool not rolled it back, their return to autocommit would have committed it.
    assert diag.rows_written("pool-uncommitted-") == (0, 0), "a transaction a task left open was committed"
    pool = int(sizes["WORKER_CONCURRENCY"]) + environment.DATABASE_POOL_OVERFLOW
    # Without a pool each task opens one. The count is the whole stack's: the health checks, beat
    # and the readings open some of their own meanwhile, and the pool may start empty.
    assert opened <= len(writes) // 5, f"{opened} connections opened for {len(writes)} tasks"
    # A pooled connection is prepared once (myauth/pooled_mysql), and rolled back on its return
    # only if it was left in a transaction: a write is its INSERT (the whole stack's other
    # statements meanwhile counted in). A rollback after every task made it 2.0, Django's own
    # set-up on every checkout 4.4.
    assert statements < 1.5, f"{statements:.1f} statements per write"
    # A worker that stops closes its pool's connections rather than dropping them.
    aborted = mariadb_status(diag, "Aborted_clients")
    diag.supervisor("restart", "worker:*")
    assert mariadb_status(diag, "Aborted_clients") == aborted
    report(f"500 database writes on the gevent worker (pool of {pool}): {opened} connections opened and "
           f"{statements:.1f} statements a write, by the whole stack meanwhile; a transaction left open rolled "
           f"back; none aborted by a worker restart")


def test_a_mariadb_crash_under_load_is_retried_through_and_the_web_recovers(diag, site, report):
    writes = calls("diagnostics.write_row", "mariadb-row", 6000)  # pooled, the worker writes hundreds a second
    diag.supervisor("stop", "worker:*")
    try:
        diag.enqueue(writes)
    finally:
        diag.supervisor("start", "worker:*")
    diag.wait_for(lambda: len(diag.started("mariadb-row")) > 100, 60, "the backlog to be draining")
    poller = Poller(f"{site}/account/login/")
    poller.start()
    started_at = diag.container_state("mariadb")["StartedAt"]
    assert diag.queued() > 0, "the backlog had drained before the kill"
    killed_at = diag.crash("mariadb")
    diag.wait_restarted("mariadb", started_at)
    diag.wait_until_ended(labels(writes), 240)
    diag.wait_healthy("web")
    time.sleep(2)
    poller.stopped.set()
    poller.join()

    assert diag.rows_written("mariadb-row-")[0] == len(writes), "a task that met the outage never wrote its row"
    retried = diag.logs("worker").count("retry: Retry in")
    assert retried > 0, "no task met the outage: the crash came too late"
    errors = [t - killed_at for t, status in poller.results if status != 200]
    assert poller.results[-1][1] == 200
    report(f"MariaDB SIGKILL while draining {len(writes)} database writes: {retried} retries, every row written "
           f"{time.time() - killed_at:.0f} s after the kill; login page not 200 for "
           f"{(max(errors) - min(errors) if errors else 0):.1f} s ({len(errors)} of {len(poller.results)} polls)")


def test_changing_a_worker_setting_under_a_stream_of_tasks_runs_every_task_exactly_once(diag, env_file, tmp_path, report):
    old = diag.run("worker", "hostname").strip()
    stream = Stream(diag, "diagnostics.sleep", "rolling", 20, 3)
    stream.start()
    try:
        diag.wait_for(lambda: len(diag.started("rolling")) > 30, 60, "the stream to be running")
        changed = diag.with_worker_environment(env_file, tmp_path, WORKER_CONCURRENCY="20")
        began = time.time()
        diag.up_worker(changed)
        recreated_after = time.time() - began
        new = diag.run("worker", "hostname").strip()
        diag.wait_for(lambda: any(e["container"] == new for e in diag.started("rolling")), 120,
                      "the new worker to take tasks from the stream")
    finally:
        sent = stream.stop()
    try:
        diag.wait_until_ended(sent, 180)
        runs = diag.runs()
        twice = [e for e in diag.events() if runs.get(e["label"], 0) > 1]
        assert all(runs[label] == 1 for label in sent), twice
        stats = diag.stack.celery_stats()
        assert {s["pool"]["max-concurrency"] for node, s in stats.items() if node.startswith("worker_0")} == {20}
        ran_on = {container: sum(e["container"] == container for e in diag.started("rolling")) for container in (old, new)}
        assert sum(ran_on.values()) == len(sent), ran_on
    finally:
        diag.up_worker(env_file)
    report(f"docker compose up -d with a changed worker setting under a stream of 3 s tasks: worker recreated in "
           f"{recreated_after:.0f} s; each of the {len(sent)} tasks ran exactly once ({ran_on[old]} on the old worker, "
           f"{ran_on[new]} on the new)")


def test_the_web_under_load_while_the_worker_drains_a_backlog_answers_without_errors(diag, site, report):
    diag.enqueue(calls("diagnostics.write_row", "web-load", 1000))
    result = subprocess.run([ROOT / "scripts" / "internal" / "stackctl", "load_web", f"{site}/account/login/",
                             "--requests", "600", "--concurrency", "8", "--max-seconds", "60"],
                            capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    assert summary["requests"] == 600
    assert summary["statuses"] == {"200": 600}, summary
    report(f"web under load (8 clients, 600 GETs of the login page) while the worker drained 1000 tasks: "
           f"no errors, {summary['per_second']:.0f} requests/s, p50 {summary['p50_ms']:.0f} ms, "
           f"p99 {summary['p99_ms']:.0f} ms")


def redis_info(diag, field: str) -> int:
    return int(next(line.split(":")[1] for line in diag.redis("info").splitlines() if line.startswith(f"{field}:")))


def test_redis_at_maxmemory_refuses_enqueues_with_a_clear_error_and_evicts_nothing(diag, sizes, report):
    kept = calls("diagnostics.mark", "maxmemory-kept", 20)
    diag.supervisor("stop", "worker:*")
    try:
        diag.enqueue(kept)
        evicted_before = redis_info(diag, "evicted_keys")
        diag.redis("config", "set", "maxmemory", str(redis_info(diag, "used_memory") + 512 * 1024))
        try:
            result = diag.stack.diagnostics("enqueue-until-refused")
        finally:
            diag.redis("config", "set", "maxmemory", str(check_sizing.size(sizes["REDIS_MAXMEMORY"])))
        assert result["error"] and "command not allowed when used memory > 'maxmemory'" in result["error"], result["error"]
        # Beat queues its own mark every minute, into the same bucket: count this test's only.
        waiting = [label_of(message) for message in diag.waiting("celery", 5)]
        assert sorted(label for label in waiting if label in labels(kept)) == sorted(labels(kept)), \
            "a queued task was evicted"
        assert redis_info(diag, "evicted_keys") == evicted_before
    finally:
        diag.supervisor("start", "worker:*")
    diag.wait_until_ended(labels(kept) | set(result["accepted"]), 120)
    report(f"Redis at maxmemory: after {len(result['accepted'])} enqueues the next failed with "
           f"\"{result['error'][:90]}...\"; nothing evicted, every accepted task ran")


def test_malformed_messages_and_unknown_tasks_are_logged_and_dropped_and_the_workers_keep_running(diag):
    before = diag.supervisor_pids()
    cpu_started_at = diag.container_state("worker-cpu")["StartedAt"]
    diag.stack.diagnostics("malformed-messages")
    after = calls("diagnostics.mark", "after", 2) + calls("diagnostics.mark", "after-cpu", 2, queue="cpu")
    diag.enqueue(after)
    diag.wait_until_ended(labels(after), 60)

    assert diag.queued() == 0 and diag.in_flight() == 0
    assert diag.supervisor_pids() == before, "a worker process was restarted"
    assert diag.container_state("worker-cpu")["StartedAt"] == cpu_started_at
    worker_log, cpu_log = diag.logs("worker"), diag.logs("worker-cpu")
    for log in (worker_log, cpu_log):
        discarded = [line for line in log.splitlines() if "Discarded a malformed message" in line]
        # Not JSON, not an envelope, not base64, an empty task (after it was registered as
        # delivered: rejected, so nothing is left in flight); a body that is not JSON Celery
        # itself logs and acknowledges.
        assert len(discarded) == 4, discarded
        assert log.count("Can't decode message body") == 1
    assert "Received unregistered task of type 'no.such.task'" in worker_log
    assert "Unrecoverable error" not in worker_log + cpu_log


def test_an_oversized_task_message_is_refused_at_enqueue_with_a_clear_error(diag):
    result = diag.stack.diagnostics("enqueue-oversized")
    assert result["error"].startswith("MessageTooLarge: task message for diagnostics.mark is"), result
    assert f"above the broker's limit of {result['limit']} bytes" in result["error"]
    assert diag.queued() == 0
