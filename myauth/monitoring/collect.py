"""One scrape: read everything the exporter reports from Redis, in a few pipelined round trips.

Whatever Redis holds, collect() returns metrics: a key of the wrong type or shape is counted in
myauth_exporter_malformed_keys and skipped, and an unreachable Redis gives
myauth_exporter_redis_up 0 within the client's timeouts.
"""

import logging
import time

import redis

from monitoring import keys, probes
from monitoring.exposition import Metric

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 2  # per Redis command: a scrape ends well within Prometheus' 10 s default
SCAN_COUNT = 1000


def scan(client, pattern: str) -> list:
    return [keys.text(key) for key in client.scan_iter(match=pattern, count=SCAN_COUNT)]


def pipelined(client, commands: list) -> list:
    """Run [(method, *args)] in one round trip; a command Redis refused gives its error."""
    pipe = client.pipeline(transaction=False)
    for method, *args in commands:
        getattr(pipe, method)(*args)
    return pipe.execute(raise_on_error=False)


class Scrape:
    def __init__(self, client, now: float):
        self.client, self.now = client, now
        self.malformed = {}

    def bad(self, kind: str) -> None:
        self.malformed[kind] = self.malformed.get(kind, 0) + 1

    def queues(self, leases: dict) -> set:
        """Every task queue a worker declared (kombu's bindings) or consumes (its lease)."""
        queues = {queue for consumed in leases.values() for queue in consumed}
        bindings = scan(self.client, keys.BINDING_PREFIX + "*")
        for binding, members in zip(bindings, pipelined(self.client, [("smembers", key) for key in bindings])):
            if isinstance(members, Exception):
                self.bad("binding")
                continue
            queues.update(filter(None, (keys.bound_queue(binding, keys.text(m)) for m in members)))
        return queues

    def leases(self) -> dict:
        """{consumer: [queues]} of every live lease."""
        ids = [key[len(keys.LEASE_PREFIX):] for key in scan(self.client, keys.LEASE_PREFIX + "*")]
        values = pipelined(self.client, [("get", keys.LEASE_PREFIX + consumer) for consumer in ids])
        leases = {}
        for consumer, value in zip(ids, values):
            if isinstance(value, Exception):
                self.bad("lease")
            elif value is not None:  # (expired since the scan)
                leases[consumer] = keys.lease_queues(keys.text(value))
        return leases

    def queue_metrics(self, queues: set, leases: dict) -> list:
        length = Metric("myauth_queue_length", "gauge", "Tasks waiting in a queue's priority bucket (0 first, Alliance Auth's default 5)")
        age = Metric("myauth_queue_oldest_age_seconds", "gauge", "Age of the oldest waiting task of a bucket, where its message says when it was sent")
        consumers = Metric("myauth_queue_consumers", "gauge", "Live worker processes consuming a queue (unexpired leases)")
        buckets = [(queue, priority) for queue in sorted(queues) for priority in keys.PRIORITIES]
        commands = []
        for queue, priority in buckets:
            commands += [("llen", keys.bucket_key(queue, priority)), ("lindex", keys.bucket_key(queue, priority), -1)]
        replies = pipelined(self.client, commands)
        for (queue, priority), count, oldest in zip(buckets, replies[::2], replies[1::2]):
            if isinstance(count, Exception):
                self.bad("queue")  # a key of a queue's name that is not a list
                continue
            length.add(count, queue=queue, priority=str(priority))
            sent = keys.sent_at(keys.text(oldest)) if isinstance(oldest, bytes) else None
            if sent is not None:
                age.add(round(max(0.0, self.now - sent), 3), queue=queue, priority=str(priority))
        for queue in sorted(queues):
            consumers.add(sum(queue in consumed for consumed in leases.values()), queue=queue)
        return [length, age, consumers]

    def consumer_metrics(self, leases: dict) -> list:
        up = Metric("myauth_consumer_up", "gauge", "1: a worker process whose lease is alive; 0: its lease expired and it still holds tasks (live workers hand them back)")
        held = Metric("myauth_consumer_held", "gauge", "Tasks a worker process has taken and not yet acknowledged")
        holders = [key[len(keys.HELD_PREFIX):] for key in scan(self.client, keys.HELD_PREFIX + "*")]
        counts = dict(zip(holders, pipelined(self.client, [("hlen", keys.HELD_PREFIX + c) for c in holders])))
        for consumer in sorted(set(leases) | set(counts)):
            count = counts.get(consumer, 0)
            if isinstance(count, Exception):
                self.bad("held")
                count = 0
            if consumer not in leases and not count:
                continue
            up.add(consumer in leases, consumer=consumer)
            held.add(count, consumer=consumer)
        return [up, held]

    def task_metrics(self) -> list:
        tasks = Metric("myauth_tasks_total", "counter", "Tasks finished by every worker since the counts began, by task name and outcome (kept in Redis, not reset by a Django start)")
        try:
            fields = self.client.hgetall(keys.TASK_COUNTS)
        except redis.ResponseError:
            self.bad("task_counts")
            fields = {}
        counts = keys.task_counts(fields)
        if len(counts) < len(fields):
            self.bad("task_counts")
        for (outcome, task), count in sorted(counts.items()):
            tasks.add(count, task=task, outcome=outcome)
        return [tasks]

    def supervisor_metrics(self) -> list:
        metrics = {
            "up": Metric("myauth_worker_up", "gauge", "1: the supervisord process is RUNNING"),
            "rss": Metric("myauth_worker_rss_bytes", "gauge", "Resident memory of a worker process (what memmon compares with its limit)"),
            "stops": Metric("myauth_worker_stops_total", "counter", "Stops of a running worker process asked of supervisord: memmon's restarts (or an operator's)"),
            "exits": Metric("myauth_worker_exits_total", "counter", "Unexpected exits of a worker process (a crash; supervisord restarts it)"),
        }
        containers = scan(self.client, keys.SUPERVISOR_PREFIX + "*")
        for container, fields in zip(containers, pipelined(self.client, [("hgetall", key) for key in containers])):
            if isinstance(fields, Exception):
                self.bad("supervisor")
                continue
            host = container[len(keys.SUPERVISOR_PREFIX):]
            for (figure, process), value in sorted(keys.supervisor_fields(fields).items()):
                if figure in metrics:
                    metrics[figure].add(value, host=host, process=process)
        return list(metrics.values())

    def redis_metrics(self) -> list:
        memory = self.client.info("memory")
        used = Metric("myauth_redis_used_memory_bytes", "gauge", "Memory Redis uses for data (used_memory)")
        limit = Metric("myauth_redis_maxmemory_bytes", "gauge", "Redis maxmemory (0: no limit); with noeviction, writes fail beyond it")
        used.add(int(memory.get("used_memory", 0)))
        limit.add(int(memory.get("maxmemory", 0)))
        return [used, limit]


SERVICE_UP_HELP = f"1: the service answers (web: its login page renders; beat: it ticked within {keys.BEAT_TICK_SECONDS} s)"


def collect(client, web_up=None) -> list:
    """Every figure; web_up, if given, probes the web (it needs no Redis, so it is reported either way)."""
    started = time.monotonic()
    services = Metric("myauth_service_up", "gauge", SERVICE_UP_HELP)
    if web_up is not None:
        services.add(web_up(), service="web")
    up = Metric("myauth_exporter_redis_up", "gauge", "1: the last scrape read Redis; 0: Redis was unreachable or refused (every other figure is missing)")
    malformed = Metric("myauth_exporter_malformed_keys", "gauge", "Keys skipped in the last scrape because they were not of the expected type or shape, by kind")
    duration = Metric("myauth_exporter_scrape_duration_seconds", "gauge", "How long the last scrape took")
    error = Metric("myauth_exporter_scrape_error", "gauge", "1: the last scrape failed on something unexpected (the exporter's log says what); the other figures are missing")
    scrape = Scrape(client, time.time())
    metrics, failed = [], False
    try:
        leases = scrape.leases()
        metrics += scrape.queue_metrics(scrape.queues(leases), leases)
        metrics += scrape.consumer_metrics(leases)
        metrics += scrape.task_metrics()
        metrics += scrape.supervisor_metrics()
        metrics += scrape.redis_metrics()
        services.add(probes.beat_ticked(client), service="beat")
        up.add(1)
    except redis.RedisError:
        metrics = []
        up.add(0)
    except Exception:  # a surprise in Redis's replies: say so in the figures, never fail the scrape
        logger.exception("scrape failed")
        metrics, failed = [], True
        up.add(1)
    error.add(failed)
    for kind, count in sorted(scrape.malformed.items()):
        malformed.add(count, kind=kind)
    duration.add(round(time.monotonic() - started, 4))
    return [up, error, malformed, duration, services, *metrics]
