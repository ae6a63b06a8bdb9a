"""Settings for `collectstatic` while the image is built: the real settings, with the values
a build does not have replaced by throwaway ones. Nothing connects to a database or broker
during collectstatic; never used at run time."""

import os
import secrets

for _name in ("SECRET_KEY", "MARIADB_PASSWORD", "REDIS_PASSWORD"):
    os.environ.setdefault(_name, secrets.token_urlsafe(48))
os.environ.setdefault("TASK_TIME_LIMIT", "1")

from .local import *  # noqa: E402  (the environment above must be set first)

# Alliance Auth's apps touch the cache when they load and a build has no Redis: let django-redis
# shrug off the refused connection (Alliance Auth then falls back to its own stub).
CACHES["default"]["LOCATION"] = "redis://127.0.0.1:1/1"
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
LOGGING["loggers"]["allianceauth"]["level"] = "CRITICAL"
