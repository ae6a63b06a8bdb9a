"""Draws docs/queue-draining.png: a backlog queued while the worker is stopped, then drained,
as the exporter reports it (myauth_queue_length per priority, sampled every second).

    PYTHONPATH=.:myauth .venv-tests/bin/python docs/queue-draining.py ENV_FILE

on a running test stack (diagnostics enabled), e.g. one started from tests/integration/conftest.py's env file.
"""

import sys
import threading
import time
import urllib.request

import matplotlib
from monitoring.exposition import parse

from stackctl.stack import ROOT, Stack
from tests.integration.diagnostics import Diagnostics

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BACKLOG = {2: 150, 5: 450, 8: 300}  # priority: tasks of 4 s each
TASK_SECONDS = 4


def lengths(port: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        samples = parse(response.read().decode())
    return {p: samples.get(("myauth_queue_length", frozenset({"queue": "celery", "priority": str(p)}.items())), 0)
            for p in BACKLOG}


def main(env_file: str) -> None:
    stack = Stack(env_file)
    port = stack.value("METRICS_PORT")
    diag = Diagnostics(stack)
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
