"""Beat's scheduler: Alliance Auth's OffsetDatabaseScheduler plus signs of life: a file for the
container's health check and an expiring Redis key for the metrics exporter."""

import logging

import redis
from allianceauth.crontab.schedulers import OffsetDatabaseScheduler
from monitoring import keys

from .liveness import touch

logger = logging.getLogger(__name__)


class LivenessScheduler(OffsetDatabaseScheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.broker = redis.Redis.from_url(self.app.conf.broker_url, socket_timeout=2, socket_connect_timeout=2)

    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        touch("beat")
        try:
            self.broker.set(keys.BEAT_TICK, 1, ex=keys.BEAT_TICK_SECONDS)
        except redis.RedisError as error:  # beat goes on; the exporter will report it down
            logger.warning("could not record beat's tick in Redis: %s", error)
        return interval
