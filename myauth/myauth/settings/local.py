# Every setting in base.py can be overloaded by redefining it here.
# Values that differ per install come from the environment (.env, see .env.example), read
# through myauth/environment.py (the variables' table), which names any missing or malformed variable.
from .base import *
import sys
from urllib.parse import urlparse

from myauth import database
from environment import read

# These are required for Django to function properly. Don't touch.
ROOT_URLCONF = "myauth.urls"
WSGI_APPLICATION = "myauth.wsgi.application"
SECRET_KEY = read("SECRET_KEY")

# Collected into the image at build time and served by the web container (WhiteNoise).
STATIC_ROOT = os.path.join(BASE_DIR, "static")
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "whitenoise.middleware.WhiteNoiseMiddleware",
)

SITE_NAME = read("SITE_NAME")
SITE_URL = read("SITE_URL")

# Django security
ALLOWED_HOSTS = [urlparse(SITE_URL).hostname]
CSRF_TRUSTED_ORIGINS = [SITE_URL]
DEBUG = False
# TLS is terminated by the reverse proxy in front of the web port (see README).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Add any additional apps to this list.
INSTALLED_APPS += [
    # 'allianceauth.theme.bootstrap',
]

APPS_WITH_PUBLIC_VIEWS = []

# In a gevent worker (Celery patched the sockets before loading this), mysqlclient's C calls
# would block every greenlet while one connects or queries (the load test measured half the
# worker's time there); PyMySQL is pure Python on gevent's cooperative sockets.
if "gevent.monkey" in sys.modules and sys.modules["gevent.monkey"].is_module_patched("socket"):
    import pymysql

    pymysql.install_as_MySQLdb()
    _DATABASE_ENGINE = database.POOL_ENGINE  # connections shared by the greenlets (database.py)
else:
    _DATABASE_ENGINE = "django.db.backends.mysql"

DATABASES["default"] = {
    "ENGINE": _DATABASE_ENGINE,
    "NAME": read("MARIADB_DATABASE"),
    "USER": read("MARIADB_USER"),
    "PASSWORD": read("MARIADB_PASSWORD"),
    "HOST": "mariadb",
    "PORT": "3306",
    "OPTIONS": {"charset": "utf8mb4"},
}

# Redis: db 0 is Celery's broker, db 1 Django's cache (sessions, QueueOnce locks).
_REDIS = f"redis://:{read('REDIS_PASSWORD')}@redis:6379"
BROKER_URL = f"{_REDIS}/0"
CACHES["default"]["LOCATION"] = f"{_REDIS}/1"
# redis-py's pool raises "Too many connections" past 100; a gevent worker's greenlets outnumber
# that, and a task that meets the error is treated as a Redis outage and run again
# (delivery.py). Wait for a free connection instead.
CACHES["default"]["OPTIONS"] = {
    "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
    "CONNECTION_POOL_KWARGS": {"max_connections": 50, "timeout": 20},
}

# Beat: Alliance Auth's OffsetDatabaseScheduler, plus the liveness file the health check reads.
CELERYBEAT_SCHEDULER = "myauth.beat.LivenessScheduler"
# Air-gapped installs and CI: beat schedules only Alliance Auth's entries that stay inside
# the stack, none that call EVE's ESI, GitLab or Google Analytics.
if not read("SCHEDULE_OUTBOUND_TASKS"):
    CELERYBEAT_SCHEDULE = {
        name: entry for name, entry in CELERYBEAT_SCHEDULE.items()
        if name == "esi_cleanup_callbackredirect"
    }
# Beat writes each entry's last run to the database right after sending it (Celery's default
# is every 3 minutes), so a beat killed and restarted never runs the same slot twice.
CELERYBEAT_SYNC_EVERY = 1
# A task past this is killed, so a warm shutdown always ends before supervisord's stopwaitsecs.
CELERYD_TASK_TIME_LIMIT = read("TASK_TIME_LIMIT")

ESI_SSO_CALLBACK_URL = f"{SITE_URL}/sso/callback"  # Do NOT change this line!
ESI_SSO_CLIENT_ID = read("ESI_SSO_CLIENT_ID")
ESI_SSO_CLIENT_SECRET = read("ESI_SSO_CLIENT_SECRET")
# Alliance Auth's check B009 requires a contact; until the operator sets one, the site's admin.
ESI_USER_CONTACT_EMAIL = read("ESI_USER_CONTACT_EMAIL") or f"admin@{urlparse(SITE_URL).hostname}"

EMAIL_HOST = read("EMAIL_HOST")
EMAIL_PORT = read("EMAIL_PORT")
EMAIL_HOST_USER = read("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = read("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = read("EMAIL_USE_TLS")
DEFAULT_FROM_EMAIL = read("DEFAULT_FROM_EMAIL")

# Containers log to stdout (docker logs, rotated by compose); no log files in the image.
for _handler in ("log_file", "extension_file", "mumble_authenticator_file"):
    LOGGING["handlers"][_handler] = {"class": "logging.NullHandler"}
LOGGING["handlers"]["console"]["level"] = "INFO"

# Tasks that prove the stack's behaviour (tests, load test); off in production.
if read("DIAGNOSTICS_ENABLED"):
    INSTALLED_APPS += ["diagnostics"]
    CELERYBEAT_SCHEDULE["diagnostics_every_minute"] = {
        "task": "diagnostics.mark",
        "schedule": crontab(minute="*"),
        "args": ["beat"],
    }

#######################################
# Add any custom settings below here. #
#######################################
