"""The stack's delivery policy (README, "Guarantees"): each task runs once while its worker
lives, and again if its worker dies before it returns.

- A task is acknowledged when it returns, also when it fails or times out (acks late), so a
  worker killed mid-task leaves its message held in Redis, and a live worker hands it back once
  the dead one's lease expires (broker.py); a prefork child killed mid-task has its task requeued.
- A task that fails only because the database or Redis was unreachable (a restart, a
  failover) is run again rather than failed.
"""

import redis
from celery import signals
from celery.exceptions import Reject
from django import db

from environment import read

DATABASE_OUTAGE = (db.OperationalError, db.InterfaceError)
DATABASE_OUTAGE_RETRIES = 10  # backoff 5, 10, 20, 40, then 60 s: about 7 minutes in all
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError (restarting) is one


def apply(app) -> None:
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True
    app.conf.task_annotations = {"*": {"@__call__": run_again_after_outages}}
    signals.celeryd_init.connect(redeliver_after_visibility_timeout, weak=False)


def run_again_after_outages(call):
    """Wraps every task's __call__."""
    def call_or_run_again(task, *args, **kwargs):
        try:
            return call(task, *args, **kwargs)
        except DATABASE_OUTAGE as error:
            countdown = min(5 * 2 ** task.request.retries, 60)
            raise task.retry(exc=error, countdown=countdown, max_retries=DATABASE_OUTAGE_RETRIES)
        except REDIS_OUTAGE as error:
            # Redis is the broker too, so no retry can be sent now: hand the message back. If
            # Redis cannot take it now, the worker's next broker connection hands it back.
            raise Reject(error, requeue=True)
    return call_or_run_again


def redeliver_after_visibility_timeout(conf, **kwargs):
    """celeryd_init: kombu's own redelivery, for messages recorded by kombu's transport (a
    worker of an older release of this stack; broker.py). Set as a worker starts, because only
    consumers use it; the web app's broker_transport_options stay exactly Alliance Auth's two
    priority keys, which its check B003 requires."""
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        "visibility_timeout": read("BROKER_VISIBILITY_TIMEOUT"),
    }
