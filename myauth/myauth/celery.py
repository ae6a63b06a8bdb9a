import os

from celery import Celery, signals
from celery.app import trace

# set the default Django settings module for the 'celery' program.
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'myauth.settings.local')

from django.conf import settings

from . import database, delivery, greenlets, task_counts

app = Celery('myauth')

# Automatically try to establish the connection to the AMQP broker on
# Celery startup if it is unavailable.
app.conf.broker_connection_retry_on_startup = True

# Kombu's Redis transport, made to drop undecodable messages instead of crashing the worker,
# and to refuse oversized ones at enqueue (broker.py).
app.conf.broker_transport = "myauth.broker:Transport"

# Set a hard task execution time of 5 minutes before celery will cold restart
# There are used in a docker install and dont seem to be needed with Supervisor.
# app.conf.worker_soft_shutdown_timeout = 300
# app.conf.worker_enable_soft_shutdown_on_idle = True

# Using a string here means the worker don't have to serialize
# the configuration object to child processes.
app.config_from_object('django.conf:settings')

# setup priorities ( 0 Highest, 9 Lowest )
app.conf.broker_transport_options = {
    'priority_steps': list(range(10)),  # setup que to have 10 steps
    'queue_order_strategy': 'priority',  # setup que to use prio sorting
}
app.conf.task_default_priority = 5  # anything called with the task.delay() will be given normal priority (5)
app.conf.worker_prefetch_multiplier = 1  # only prefetch single tasks at a time on the workers so that prio tasks happen
app.conf.worker_eta_task_limit = 100  # Stops the worker from filling itself with ETA tasks and OOMing

# One result backend object per process, not per thread: under gevent a thread is a greenlet, so
# Celery built a new one for every task (3.5 % of the worker's time on no-op tasks). None is
# configured here (Celery's DisabledBackend stores nothing); one set in local.py must be safe to
# share between threads (Redis's is).
app.conf.result_backend_thread_safe = True

# The stack's delivery policy: once while the worker lives, again if it dies (delivery.py).
delivery.apply(app)

# The gevent worker's database pool: a connection per greenlet, reused across tasks (database.py).
signals.worker_init.connect(database.size_pool, weak=False)
signals.worker_shutdown.connect(database.close_pool, weak=False)
# ... and its Django caches, shared by the greenlets (greenlets.py).
signals.worker_init.connect(greenlets.share_caches, weak=False)

app.conf.ONCE = {
    'backend': 'allianceauth.services.tasks.DjangoBackend',
    'settings': {}
}

app.conf.task_routes = {
    # Some AA Services are sensitive to threaded tasks
    # Utilize a single threaded worker to process these tasks
    # Discord: Multithreads can cause duplicate role creation.
    "discord.*": {"queue": "services"},
}

# Load task modules from all registered Django app configs.
app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)

# Remove result from default log message on task success
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

# The worker and beat containers' health checks read the files these write (liveness.py).
from .liveness import BrokerLivenessStep  # noqa: E402

app.steps["consumer"].add(BrokerLivenessStep)

# Task outcomes counted for the exporter, and the sent-at header of every task (task_counts.py).
task_counts.apply(app)
