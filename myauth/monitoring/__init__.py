"""The stack's monitoring: what the exporter reads from Redis and serves to Prometheus (README,
"Monitoring"). Standard library and redis-py only: the exporter starts no Django and no Celery."""
