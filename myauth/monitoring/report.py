"""scripts/status's page: the services' health and the exporter's figures, at a glance, with
the alerts that fire. Input: `docker compose ps --format json` rows and parsed /metrics
samples (exposition.parse). No I/O: unit-tested.
"""

from monitoring.keys import PRIORITIES

MiB = 1024**2
URGENT_PRIORITIES = range(1, 5)  # README: a backlog at 7 is normal, at 2 an incident
URGENT_WAIT_SECONDS = 60
REDIS_MEMORY_ALERT_SHARE = 0.9


def series(samples: dict, name: str) -> list:
    """[(labels dict, value)] of one metric, sorted by labels."""
    return sorted(((dict(labels), value) for (metric, labels), value in samples.items() if metric == name),
                  key=lambda item: sorted(item[0].items()))


def value(samples: dict, name: str, **labels):
    return samples.get((name, frozenset(labels.items())))


def services_section(services: list) -> list:
    lines = ["Services"]
    for row in sorted(services, key=lambda row: row.get("Service", "")):
        health = row.get("Health") or "-"
        lines.append(f"  {row.get('Service', '?'):<12} {row.get('State', '?'):<10} {health:<10} {row.get('Status', '')}")
    return lines


def queues_section(samples: dict) -> list:
    queues = sorted({labels["queue"] for labels, _ in series(samples, "myauth_queue_length")})
    header = "".join(f"{p:>6}" for p in PRIORITIES)
    lines = ["Queues (tasks waiting per priority; 0 is taken first)", f"  {'queue':<12}{header}{'total':>8}{'consumers':>11}{'oldest':>9}"]
    for queue in queues:
        counts = [value(samples, "myauth_queue_length", queue=queue, priority=str(p)) for p in PRIORITIES]
        ages = [age for labels, age in series(samples, "myauth_queue_oldest_age_seconds") if labels["queue"] == queue]
        consumers = value(samples, "myauth_queue_consumers", queue=queue)
        cells = "".join(f"{'?' if c is None else int(c):>6}" for c in counts)
        oldest = f"{max(ages):.0f}s" if ages else "-"
        lines.append(f"  {queue!s:<12}{cells}{int(sum(c or 0 for c in counts)):>8}"
                     f"{'?' if consumers is None else int(consumers):>11}{oldest:>9}")
    return lines


def consumers_section(samples: dict) -> list:
    lines = ["Consumers (worker processes by lease: host.pid.id)"]
    held = {labels["consumer"]: count for labels, count in series(samples, "myauth_consumer_held")}
    for labels, up in series(samples, "myauth_consumer_up"):
        consumer = labels["consumer"]
        state = "alive" if up else "DEAD, its tasks go back"
        lines.append(f"  {consumer:<40} {state:<24} holds {int(held.get(consumer, 0))}")
    return lines if len(lines) > 1 else lines + ["  none"]


def processes_section(samples: dict) -> list:
    lines = ["Worker processes (supervisord)"]
    figures = {}
    for name, figure in (("myauth_worker_up", "up"), ("myauth_worker_rss_bytes", "rss"),
                         ("myauth_worker_stops_total", "stops"), ("myauth_worker_exits_total", "exits")):
        for labels, number in series(samples, name):
            figures.setdefault((labels["host"], labels["process"]), {})[figure] = number
    for (host, process), figure in sorted(figures.items()):
        state = "RUNNING" if figure.get("up") else "not running"
        lines.append(f"  {host[:12]:<13}{process:<22}{state:<12} rss {figure.get('rss', 0) / MiB:6.0f} MiB"
                     f"  memmon/operator stops {int(figure.get('stops', 0))}  crashes {int(figure.get('exits', 0))}")
    return lines if len(lines) > 1 else lines + ["  none reporting"]


def summary_section(samples: dict) -> list:
    tasks = {}
    for labels, count in series(samples, "myauth_tasks_total"):
        tasks[labels["outcome"]] = tasks.get(labels["outcome"], 0) + int(count)
    used = value(samples, "myauth_redis_used_memory_bytes") or 0
    limit = value(samples, "myauth_redis_maxmemory_bytes") or 0
    share = f" ({used / limit:.0%})" if limit else ""
    return ["Tasks finished: " + (", ".join(f"{outcome} {count}" for outcome, count in sorted(tasks.items())) or "none yet"),
            f"Redis memory: {used / MiB:.1f} MiB of maxmemory {limit / MiB:.0f} MiB{share}"]


def alerts(services: list, samples: dict) -> list:
    firing = []
    for row in services:
        if row.get("Health") == "unhealthy" or (row.get("State") not in ("running", None) and row.get("Service") != "migrate"):
            firing.append(f"service {row.get('Service')} is {row.get('Health') or row.get('State')}")
    if samples is None:
        return firing + ["the exporter did not answer"]
    if value(samples, "myauth_exporter_redis_up") != 1:
        return firing + ["the exporter cannot read Redis"]
    if value(samples, "myauth_exporter_scrape_error"):
        return firing + ["the exporter's scrape failed (see docker compose logs metrics)"]
    queued = {}
    for labels, count in series(samples, "myauth_queue_length"):
        queued[labels["queue"]] = queued.get(labels["queue"], 0) + count
    for queue, count in sorted(queued.items()):
        if count and not value(samples, "myauth_queue_consumers", queue=queue):
            firing.append(f"queue {queue}: {int(count)} task(s) waiting and no live consumer")
    for labels, age in series(samples, "myauth_queue_oldest_age_seconds"):
        if int(labels["priority"]) in URGENT_PRIORITIES and age > URGENT_WAIT_SECONDS:
            firing.append(f"queue {labels['queue']}: a priority {labels['priority']} task has waited {age:.0f} s")
    for labels, up in series(samples, "myauth_consumer_up"):
        if not up:
            firing.append(f"consumer {labels['consumer']} is dead and holds tasks")
    used, limit = value(samples, "myauth_redis_used_memory_bytes"), value(samples, "myauth_redis_maxmemory_bytes")
    if used and limit and used > REDIS_MEMORY_ALERT_SHARE * limit:
        firing.append(f"Redis uses {used / limit:.0%} of maxmemory")
    for labels, count in series(samples, "myauth_exporter_malformed_keys"):
        firing.append(f"{int(count)} malformed Redis key(s) of kind {labels['kind']} (see the exporter's metrics)")
    return firing


def report(services: list, samples) -> str:
    sections = [services_section(services)]
    if samples is not None and value(samples, "myauth_exporter_redis_up") == 1 and not value(samples, "myauth_exporter_scrape_error"):
        sections += [queues_section(samples), consumers_section(samples), processes_section(samples), summary_section(samples)]
    firing = alerts(services, samples)
    sections.append(["Alerts firing"] + [f"  ! {alert}" for alert in firing] if firing else ["Alerts firing: none"])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
