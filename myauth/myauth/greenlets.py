"""The gevent worker's Django caches: one set per process, not one per task.

Django keeps its cache objects per thread (per context), which in a gevent worker is per greenlet,
and Celery runs every task in a new greenlet: each task built the cache object, its django-redis
client and a Redis client anew, and Alliance Auth's task statistics and the tasks' own Redis
writes paid for it on every task. The clients share one connection pool either way, and
django-redis and redis-py are safe to share between threads, so the gevent worker shares the
objects too. (The database connections have their own pool: database.py.)
"""

import types


def share_caches(sender, **kwargs) -> None:
    """worker_init: in a gevent worker, Django's cache handler keeps one object per alias for the process."""
    if not getattr(sender.pool_cls, "is_green", False):
        return
    from django.core.cache import caches

    caches._connections = types.SimpleNamespace()  # was a Local: per greenlet under gevent
