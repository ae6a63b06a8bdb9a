"""The metrics exporter and scripts/status on the running test stack (issue 16): what they
report is what Redis, supervisord and the workers did."""

import os
import subprocess
import urllib.request

import pytest
from monitoring.exposition import parse
from monitoring.keys import SEPARATOR

from stackctl.stack import ROOT
from tests.conftest import IMAGE_TAG
from tests.integration.conftest import RERUN_WITHIN_SECONDS

BACKLOG = {1: 2, 3: 1, 5: 4, 7: 3, 9: 1}  # priority: tasks queued while no worker consumes
BACKLOG_TASK = "diagnostics.write_row"  # not beat's diagnostics.mark, so the backlog is ours to count


@pytest.fixture
def metrics(env):
    url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"

    def read() -> dict:
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse(response.read().decode())
    return read


def sample(samples: dict, name: str, default=None, **labels):
    return samples.get((name, frozenset(labels.items())), default)


def lengths(samples: dict, queue: str) -> dict:
    return {p: sample(samples, "myauth_queue_length", queue=queue, priority=str(p)) for p in range(10)}


def alive(samples: dict) -> set:
    return {dict(labels)["consumer"] for (name, labels), up in samples.items() if name == "myauth_consumer_up" and up}


def status(env_file) -> subprocess.CompletedProcess:
    return subprocess.run([ROOT / "scripts" / "status"], env={**os.environ, "ENV_FILE": str(env_file)},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def status_row(output: str, queue: str) -> dict:
    """{priority: count} of the queue's row of scripts/status's queue table."""
    row = next(line.split() for line in output.splitlines() if line.split()[:1] == [queue] and len(line.split()) >= 11)
    return {p: int(count) for p, count in enumerate(row[1:11])}


def prometheus_alerts(diag, name: str) -> str:
    """The alerts of this name firing in the running Prometheus, as promtool prints them."""
    query = f'ALERTS{{alertname="{name}",alertstate="firing"}}'
    return diag.compose("exec", "-T", "prometheus", "promtool", "query", "instant", "http://localhost:9090", query,
                        check=False).stdout


def test_the_alert_rules_pass_their_promtool_unit_tests(built_images):
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                             "-v", f"{ROOT / 'config' / 'prometheus'}:/rules:ro", "-w", "/rules",
                             "--entrypoint", "promtool", f"myauth-prometheus:{IMAGE_TAG}", "test", "rules", "alerts.test.yml"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_a_backlog_queued_while_the_worker_is_stopped_shows_its_exact_count_per_priority(diag, metrics, env_file):
    diag.supervisor("stop", "worker:*")
    labels = []
    try:
        diag.wait_for(lambda: sample(metrics(), "myauth_queue_consumers", queue="celery") == 0, 60,
                      "the exporter to see no consumer of celery")
        calls = []
        for priority, count in BACKLOG.items():
            for number in range(count):
                labels.append(f"metrics-backlog-{priority}-{number}")
                calls.append((BACKLOG_TASK, [labels[-1]], {"priority": priority}))
        diag.enqueue(calls)

        def expected() -> dict:  # ours, plus whatever beat queued meanwhile (not ours)
            return {p: BACKLOG.get(p, 0) + sum(task != BACKLOG_TASK for task in tasks)
                    for p, tasks in diag.queued_tasks("celery").items()}

        diag.wait_for(lambda: lengths(metrics(), "celery") == expected(), 30, "the metrics to show the backlog")
        samples = metrics()
        for priority in BACKLOG:
            age = sample(samples, "myauth_queue_oldest_age_seconds", queue="celery", priority=str(priority))
            assert age is not None and 0 <= age < 300, (priority, age)
        for queue in ("services", "cpu"):  # every bucket of every queue the stack consumes
            assert None not in lengths(samples, queue).values(), (queue, lengths(samples, queue))

        def status_shows_the_backlog():
            result = status(env_file)
            return result if status_row(result.stdout, "celery") == expected() else None
        report = diag.wait_for(status_shows_the_backlog, 30, "scripts/status to show the backlog")
        assert report.returncode == 1 and "queue celery:" in report.stdout and "no live consumer" in report.stdout, report.stdout
        for section in ("Services", "Queues", "Consumers", "Worker processes", "Redis memory", "Alerts firing"):
            assert section in report.stdout, report.stdout

        # ... and the running Prometheus (profile monitoring) fires its alert.
        diag.wait_for(lambda: 'queue="celery"' in prometheus_alerts(diag, "QueueNoConsumer"), 120,
                      "Prometheus to fire QueueNoConsumer for celery")
    finally:
        diag.supervisor("start", "worker:*")
    diag.wait_until_ended(labels)
    diag.wait_healthy("worker")


def test_task_counts_rise_by_exactly_the_tasks_run_and_survive_a_django_start(diag, metrics, stack):
    def counts():
        samples = metrics()
        return (sample(samples, "myauth_tasks_total", 0, task=BACKLOG_TASK, outcome="succeeded"),
                sample(samples, "myauth_tasks_total", 0, task="diagnostics.once", outcome="failed"))

    before = counts()
    labels = [f"metrics-count-{number}" for number in range(20)]
    diag.enqueue([(BACKLOG_TASK, [label], {}) for label in labels]
                 + [("diagnostics.once", [f"metrics-fail-{number}", 0, True], {}) for number in range(3)])
    diag.wait_until_ended(labels)
    expected = (before[0] + 20, before[1] + 3)
    diag.wait_for(lambda: counts() == expected, 60, f"the counts to reach {expected} (from {before})")
    # Every Django start clears Alliance Auth's own counters (AuthenticationConfig.ready()).
    stack.exec("web", "python3", "manage.py", "check")
    assert counts() == expected


def test_odd_keys_and_odd_queue_names_are_reported_not_fatal(diag, metrics):
    odd = 'metrics odd "q"\\\u00e9'
    binding = "_kombu.binding.metrics-odd"
    try:
        diag.redis("sadd", binding, f"r{SEPARATOR}{SEPARATOR}{odd}", "not a binding")
        diag.redis("set", odd, "a string where kombu keeps a list")
        diag.redis("hset", "_myauth.tasks", "nonsense", "1")

        def odd_queue_reported(samples):
            return (sample(samples, "myauth_exporter_redis_up") == 1
                    and sample(samples, "myauth_exporter_malformed_keys", kind="queue", default=0) >= 1
                    and sample(samples, "myauth_exporter_malformed_keys", kind="task_counts", default=0) >= 1
                    and [lengths(samples, odd)[p] for p in range(1, 10)] == [0] * 9
                    and lengths(samples, odd)[0] is None)
        diag.wait_for(lambda: odd_queue_reported(metrics()), 30, "the exporter to report the odd keys")
    finally:
        diag.redis("del", binding, odd)
        diag.redis("hdel", "_myauth.tasks", "nonsense")


def test_an_unreachable_redis_gives_redis_up_0_within_the_scrape_timeout(stack):
    # A second exporter in the metrics container, pointed at an address nothing answers on.
    script = ("import time; from monitoring.exporter import broker_client; from monitoring.collect import collect; "
              "from monitoring.exposition import render; t = time.monotonic(); print(render(collect(broker_client())), end=''); "
              "print('took', time.monotonic() - t)")
    output = stack.exec("metrics", "env", "REDIS_HOST=192.0.2.1", "python3", "-c", script)
    samples = parse("\n".join(line for line in output.splitlines() if not line.startswith("took")))
    assert sample(samples, "myauth_exporter_redis_up") == 0
    assert float(output.split("took")[-1]) < 5, output


def test_a_killed_worker_container_shows_its_consumers_gone_and_comes_back(diag, metrics):
    host = diag.compose("exec", "-T", "worker", "python3", "-c", "import socket; print(socket.gethostname())").stdout.strip()
    before = {consumer for consumer in alive(metrics()) if consumer.startswith(host + ".")}
    assert before, f"no consumer of the worker container {host} in {alive(metrics())}"
    started_at = diag.container_state("worker")["StartedAt"]
    diag.crash("worker")
    # Its leases expire (LEASE_SECONDS) and are not renewed: the exporter shows them gone.
    diag.wait_for(lambda: not before & alive(metrics()), RERUN_WITHIN_SECONDS + 30,
                  "the killed worker's consumers to disappear")
    diag.wait_restarted("worker", started_at)
    diag.wait_for(lambda: {c for c in alive(metrics()) if c.startswith(host + ".")} - before, 60,
                  "the restarted worker's consumers to appear")
    samples = metrics()
    assert sample(samples, "myauth_worker_up", host=host, process="worker_00") == 1
    assert sample(samples, "myauth_worker_rss_bytes", host=host, process="worker_00") > 10 * 1024**2


def test_a_memmon_restart_counts_as_one_stop_of_that_process_and_no_crash(diag, metrics, memmon_limit_mib):
    host = diag.compose("exec", "-T", "worker", "python3", "-c", "import socket; print(socket.gethostname())").stdout.strip()

    def figures():
        samples = metrics()
        return {figure: sample(samples, f"myauth_worker_{figure}", host=host, process="worker_00")
                for figure in ("stops_total", "exits_total", "up")}

    before = diag.wait_for(lambda: (f := figures())["up"] == 1 and f, 30, "worker_00 to be reported RUNNING")
    pid = diag.supervisor_pids()["worker:worker_00"]
    diag.enqueue([("diagnostics.hold_memory", ["metrics-grow", memmon_limit_mib], {})])
    diag.wait_for(lambda: diag.supervisor_pids().get("worker:worker_00", pid) != pid, 90, "memmon to restart worker_00")
    expected = {"stops_total": before["stops_total"] + 1, "exits_total": before["exits_total"], "up": 1}
    diag.wait_for(lambda: figures() == expected, 30, f"the metrics to show one stop of worker_00 ({before} before)")
    assert "Restarting worker:worker_00" in diag.logs("worker")


def test_a_stopped_web_and_beat_show_service_up_0_and_1_again_when_they_are_back(diag, metrics):
    def services() -> dict:
        samples = metrics()
        return {service: sample(samples, "myauth_service_up", service=service) for service in ("web", "beat")}

    diag.wait_for(lambda: services() == {"web": 1, "beat": 1}, 30, "web and beat to be reported up")
    diag.compose("stop", "web", "beat")
    try:
        # beat's tick expires in Redis after keys.BEAT_TICK_SECONDS (30 s); the web is asked at each scrape.
        diag.wait_for(lambda: services() == {"web": 0, "beat": 0}, 60, "web and beat to be reported down")
    finally:
        diag.compose("start", "web", "beat")
    diag.wait_healthy("web")
    diag.wait_healthy("beat")
    diag.wait_for(lambda: services() == {"web": 1, "beat": 1}, 30, "web and beat to be reported up again")
