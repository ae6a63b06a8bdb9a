"""Draws docs/queue-draining.png: a backlog queued while the worker is stopped, then drained,
as the exporter reports it (myauth_queue_length per priority, sampled every second).

    MYAUTH_TEST_PROJECT=<images' tag> .venv-tests/bin/python docs/queue-draining.py ENV_FILE

on a running test stack (diagnostics enabled), e.g. one started from tests/conftest.py's env file.
"""

import sys
import threading
import time
import urllib.request
from pathlib import Path

import matplotlib
from testcontainers.compose import DockerCompose

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "myauth"))
from monitoring.exposition import parse  # noqa: E402
from tests.conftest import environment  # noqa: E402
from tests.integration.diagnostics import Diagnostics  # noqa: E402

BACKLOG = {2: 150, 5: 450, 8: 300}  # priority: tasks of 4 s each
TASK_SECONDS = 4


def lengths(port: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        samples = parse(response.read().decode())
    return {p: samples.get(("myauth_queue_length", frozenset({"queue": "celery", "priority": str(p)}.items())), 0)
            for p in BACKLOG}


def main(env_file: str) -> None:
    port = environment.read_env_file(env_file)["METRICS_PORT"]
    diag = Diagnostics(DockerCompose(ROOT, env_file=env_file))
    diag.supervisor("stop", "worker:*")
    diag.enqueue([("diagnostics.sleep", [f"draining-{p}-{n}", TASK_SECONDS], {"priority": p})
                  for p, count in BACKLOG.items() for n in range(count)])
    started, series = time.monotonic(), []
    threading.Thread(target=diag.supervisor, args=("start", "worker:*")).start()  # it returns once started
    while True:
        series.append((time.monotonic() - started, lengths(port)))
        if not any(series[-1][1].values()):
            break
        time.sleep(1)
    figure, axes = plt.subplots(figsize=(8, 3.5))
    for priority in BACKLOG:
        axes.plot([t for t, _ in series], [counts[priority] for _, counts in series], label=f"priority {priority}")
    axes.set_xlabel("seconds after supervisorctl start worker:*")
    axes.set_ylabel("myauth_queue_length")
    axes.set_title("A backlog draining: queue celery, one gevent worker of 75 greenlets, 4 s tasks")
    axes.legend()
    figure.tight_layout()
    figure.savefig(ROOT / "docs" / "queue-draining.png", dpi=100)


if __name__ == "__main__":
    main(sys.argv[1])
