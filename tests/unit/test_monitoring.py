"""The exporter's parsing and formatting (myauth/monitoring/keys.py, exposition.py): odd keys,
odd queue names, malformed messages."""

import json

from monitoring import keys
from monitoring.exposition import Metric, parse, render

SEP = keys.SEPARATOR


def test_bucket_keys_are_kombus_the_bare_name_for_priority_0():
    assert keys.bucket_key("celery", 0) == "celery"
    assert keys.bucket_key("celery", 7) == "celery\x06\x167"


def test_a_binding_names_its_queue_and_celerys_plumbing_is_not_a_task_queue():
    assert keys.bound_queue("_kombu.binding.celery", f"celery{SEP}{SEP}celery") == "celery"
    assert keys.bound_queue("_kombu.binding.services", f"services{SEP}{SEP}services") == "services"
    assert keys.bound_queue("_kombu.binding.reply.celery.pidbox", f"{SEP}{SEP}abc.reply.celery.pidbox") is None
    assert keys.bound_queue("_kombu.binding.celeryev", f"worker.#{SEP}*{SEP}celeryev.abc") is None


def test_a_binding_that_is_not_kombus_shape_names_no_queue():
    for member in ("", "celery", f"a{SEP}b", f"a{SEP}b{SEP}", f"a{SEP}b{SEP}c{SEP}d"):
        assert keys.bound_queue("_kombu.binding.x", member) is None, member
    assert keys.bound_queue("other", f"a{SEP}b{SEP}c") is None


def test_a_queue_name_with_odd_characters_is_kept_as_it_is():
    odd = 'q "1"\\\n\u00e9'
    assert keys.bound_queue("_kombu.binding.x", f"r{SEP}{SEP}{odd}") == odd
    assert keys.text(b"q\xff") == "q\\xff"


def test_lease_queues_tolerate_anything():
    assert keys.lease_queues(json.dumps({"queues": ["celery", "services"]})) == ["celery", "services"]
    for value in ("", "not json", "[]", "3", json.dumps({"queues": "celery"}), json.dumps({"pid": 1})):
        assert keys.lease_queues(value) == [], value
    assert keys.lease_queues(json.dumps({"queues": ["celery", 3, None]})) == ["celery"]


def test_sent_at_is_read_from_our_header_only():
    assert keys.sent_at(json.dumps({"headers": {keys.SENT_AT_HEADER: 1700000000.5}})) == 1700000000.5
    for message in ("", "garbage", "[]", json.dumps({"headers": {}}), json.dumps({"headers": None}),
                    json.dumps({"headers": {keys.SENT_AT_HEADER: "soon"}}),
                    json.dumps({"headers": {keys.SENT_AT_HEADER: True}})):
        assert keys.sent_at(message) is None, message


def test_supervisor_fields_skip_what_does_not_parse():
    fields = {b"rss:worker_00": b"1024", b"up:worker_00": b"1", b"rss": b"5", b"rss:": b"5",
              b"stops:worker_00": b"many", b"exits:w\xff": b"2"}
    assert keys.supervisor_fields(fields) == {("rss", "worker_00"): 1024.0, ("up", "worker_00"): 1.0,
                                              ("exits", "w\\xff"): 2.0}


def test_render_escapes_label_values_and_parse_reads_them_back():
    metric = Metric("myauth_queue_length", "gauge", "Tasks waiting\nin a bucket")
    odd = 'q "1"\\\nx\x06\x16'
    metric.add(3, queue=odd, priority="5")
    metric.add(0, queue="celery", priority="0")
    text = render([metric, Metric("myauth_exporter_redis_up", "gauge", "up", [({}, True)])])
    assert "# HELP myauth_queue_length Tasks waiting in a bucket\n# TYPE myauth_queue_length gauge\n" in text
    assert 'myauth_queue_length{priority="5",queue="q \\"1\\"\\\\\\nx\x06\x16"} 3\n' in text
    assert "myauth_exporter_redis_up 1\n" in text
    samples = parse(text)
    assert samples[("myauth_queue_length", frozenset({"queue": odd, "priority": "5"}.items()))] == 3
    assert samples[("myauth_exporter_redis_up", frozenset())] == 1


def test_numbers_are_rendered_as_prometheus_reads_them():
    metric = Metric("m", "gauge", "h")
    for value in (0, 7, 2.5, 3.0, float("nan"), float("inf")):
        metric.add(value, v=str(value))
    lines = render([metric]).splitlines()[2:]
    assert [line.split()[-1] for line in lines] == ["0", "7", "2.5", "3", "NaN", "+Inf"]


def test_task_counts_are_read_per_outcome_and_task_name():
    fields = {keys.task_count_field("succeeded", "diagnostics.mark").encode(): b"3",
              b"failed:a.b:c": b"1", b"lost:x": b"1", b"succeeded:": b"1", b"retried:y": b"two", b"retried": b"1"}
    assert keys.task_counts(fields) == {("succeeded", "diagnostics.mark"): 3, ("failed", "a.b:c"): 1}


def samples_of(*metrics) -> dict:
    return parse(render(metrics))


def test_the_status_report_shows_every_bucket_and_fires_the_alerts_it_can_tell():
    from monitoring import report

    length = Metric("myauth_queue_length", "gauge", "h")
    for priority in range(10):
        length.add({2: 4, 5: 1}.get(priority, 0), queue="celery", priority=str(priority))
        length.add(0, queue="services", priority=str(priority))
    samples = samples_of(
        Metric("myauth_exporter_redis_up", "gauge", "h", [({}, 1)]),
        length,
        Metric("myauth_queue_oldest_age_seconds", "gauge", "h", [({"queue": "celery", "priority": "2"}, 75.0)]),
        Metric("myauth_queue_consumers", "gauge", "h", [({"queue": "celery"}, 0), ({"queue": "services"}, 1)]),
        Metric("myauth_consumer_up", "gauge", "h", [({"consumer": "abc.7.ff"}, 0)]),
        Metric("myauth_consumer_held", "gauge", "h", [({"consumer": "abc.7.ff"}, 2)]),
        Metric("myauth_redis_used_memory_bytes", "gauge", "h", [({}, 95)]),
        Metric("myauth_redis_maxmemory_bytes", "gauge", "h", [({}, 100)]),
    )
    services = [{"Service": "web", "State": "running", "Health": "healthy"},
                {"Service": "worker", "State": "running", "Health": "unhealthy"},
                {"Service": "migrate", "State": "exited", "Health": ""}]
    text = report.report(services, samples)
    celery_row = next(line.split() for line in text.splitlines() if line.split()[:1] == ["celery"])
    assert celery_row == ["celery", "0", "0", "4", "0", "0", "1", "0", "0", "0", "0", "5", "0", "75s"]
    assert "DEAD" in text and "holds 2" in text
    assert report.alerts(services, samples) == [
        "service worker is unhealthy",
        "queue celery: 5 task(s) waiting and no live consumer",
        "queue celery: a priority 2 task has waited 75 s",
        "consumer abc.7.ff is dead and holds tasks",
        "Redis uses 95% of maxmemory",
    ]


def test_the_status_report_says_when_the_exporter_or_redis_is_unreachable():
    from monitoring import report

    assert report.alerts([], None) == ["the exporter did not answer"]
    down = samples_of(Metric("myauth_exporter_redis_up", "gauge", "h", [({}, 0)]))
    assert report.alerts([], down) == ["the exporter cannot read Redis"]
    assert "Queues" not in report.report([], down)


def test_the_status_report_says_when_the_scrape_failed():
    from monitoring import report

    failed = samples_of(Metric("myauth_exporter_redis_up", "gauge", "h", [({}, 1)]),
                        Metric("myauth_exporter_scrape_error", "gauge", "h", [({}, 1)]))
    assert report.alerts([], failed) == ["the exporter's scrape failed (see docker compose logs metrics)"]
