import os
import time
from pathlib import Path

from django.apps import AppConfig

# A worker started with this variable stops right after its first fetch (the instant at which
# kombu's own transport has popped a message and not yet recorded it) and writes the message's
# delivery tag to HELD_AFTER_FETCH, so that a test can kill it exactly there (test_delivery.py).
HOLD_AFTER_FETCH = "DIAGNOSTICS_HOLD_AFTER_FETCH_SECONDS"
HELD_AFTER_FETCH = Path("/tmp/diagnostics-held-after-fetch")


def hold_after_fetch(tag: str) -> None:
    HELD_AFTER_FETCH.write_text(tag)
    time.sleep(float(os.environ[HOLD_AFTER_FETCH]))


def record_receipt(request, **_):
    """Records when a worker received a diagnostics.mark task, in the order its consumer fetched
    them: on a pool of several processes the order tasks start in also depends on which process
    the kernel runs first, the order they were fetched in does not."""
    if request.task_name == "diagnostics.mark":
        from .tasks import record_event

        record_event(request.args[0], "received", request.id, request.delivery_info, request.hostname)


class DiagnosticsConfig(AppConfig):
    """Tasks that prove the stack's Celery behaviour (tests, load test). Installed only when
    DIAGNOSTICS_ENABLED=true; never needed in production."""

    name = "diagnostics"
    default_auto_field = "django.db.models.AutoField"

    def ready(self):
        from celery.signals import task_received

        task_received.connect(record_receipt, weak=False)
        if os.environ.get(HOLD_AFTER_FETCH):
            from myauth import broker

            broker.after_fetch = hold_after_fetch
