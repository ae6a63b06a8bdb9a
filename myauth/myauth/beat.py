"""Beat's scheduler: Alliance Auth's OffsetDatabaseScheduler plus a liveness signal."""

from allianceauth.crontab.schedulers import OffsetDatabaseScheduler

from .liveness import touch


class LivenessScheduler(OffsetDatabaseScheduler):
    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        touch("beat")
        return interval
