"""Liveness signals for the container health checks, cheap enough to run every few seconds.

A Celery node touches /tmp/myauth-liveness/<process name> every 10 s while its consumer is
running and the broker answers PING; beat touches .../beat on every scheduler tick (beat.py).
The health checks only compare file ages, so they start no Celery client.
"""

from pathlib import Path

import redis
from celery import bootsteps
from celery.bootsteps import RUN

LIVENESS_DIR = Path("/tmp/myauth-liveness")
WORKER_INTERVAL = 10  # seconds; the health check allows several missed beats


def touch(name: str) -> None:
    LIVENESS_DIR.mkdir(exist_ok=True)
    (LIVENESS_DIR / name).touch()


class BrokerLivenessStep(bootsteps.StartStopStep):
    """Consumer step: proves the node is consuming and the broker answers."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer, **kwargs):
        super().__init__(consumer, **kwargs)
        self.timer_entry = None
        self.broker = None

    def start(self, consumer):
        self.broker = redis.Redis.from_url(
            consumer.app.conf.broker_url, socket_timeout=5, socket_connect_timeout=5
        )
        self.timer_entry = consumer.timer.call_repeatedly(WORKER_INTERVAL, self.beat, (consumer,))

    def stop(self, consumer):
        if self.timer_entry is not None:
            self.timer_entry.cancel()

    def beat(self, consumer):
        if consumer.blueprint.state == RUN and self.broker.ping():
            touch(consumer.hostname.split("@")[0])
