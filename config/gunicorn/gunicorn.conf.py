"""gunicorn for the web container; the worker count comes from compose.yaml / the overlay."""

from environment import read

bind = "0.0.0.0:8000"
workers = read("GUNICORN_WORKERS")
timeout = 120  # Alliance Auth's own gunicorn setting
graceful_timeout = 30
worker_tmp_dir = "/dev/shm"
# Recycle workers now and then: bounds the growth of a leaking view or library.
max_requests = 1000
max_requests_jitter = 100
accesslog = "-"
control_socket_disable = True  # unused; it would be written under $HOME, on a read-only filesystem
