"""The stack at a glance: every service's health, each queue's depth per priority, the workers
and what they hold, memmon restarts, Redis memory, and the alerts that fire.

    scripts/status            (ENV_FILE=path: another stack's env file; default .env)

Reads `docker compose ps` and the exporter's /metrics on 127.0.0.1:METRICS_PORT; needs only
Python's standard library. Exits 1 when an alert fires.
"""

import sys
import urllib.request

from monitoring import report
from monitoring.exposition import parse

from stackctl.stack import Stack, StackError

TIMEOUT_SECONDS = 10


def samples(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_SECONDS) as response:
            return parse(response.read().decode())
    except OSError:
        return None


def main() -> int:
    try:
        stack = Stack()
        rows, figures = stack.ps("--all"), samples(stack.value("METRICS_PORT"))
    except StackError as error:
        print(f"status: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(report.report(rows, figures))
    return 1 if report.alerts(rows, figures) else 0


if __name__ == "__main__":
    sys.exit(main())
