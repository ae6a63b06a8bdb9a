"""Sizing rules (stackctl/check_sizing.py): each rule fires on a stack that breaks it, with its
numbers, and passes the overlays as they are declared. (The overlays as `docker compose`
reads them, and the command itself: tests/integration/test_configuration.py.)"""

import copy

import pytest

from stackctl import check_sizing
from stackctl.stack import ROOT
from tests.unit.declared import declared

OVERLAYS = ["small", "medium", "large"]


@pytest.fixture(scope="module")
def small():
    return declared("config/overlays/small.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_as_declared_passes_every_rule(overlay):
    assert check_sizing.violations(declared(f"config/overlays/{overlay}.yaml")) == []


def broken(small, service, path, value):
    changed = copy.deepcopy(small)
    target = changed["services"][service]
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return changed


@pytest.mark.parametrize("service, path, value, message", [
    ("mariadb", ["deploy", "resources", "limits", "memory"], str(3 * 1024**3),
     "exceed the 3584 MiB a 4096 MiB host can give"),
    ("worker", ["environment", "WORKER_MEMORY_LIMIT"], "600MB",
     "memmon lets 1 gevent process(es) reach 600 MiB each, the services worker 256 MiB, plus 64 MiB"),
    ("worker", ["environment", "WORKER_PROGRAMS"], "2", "= 1088 MiB, above the container's limit of 768 MiB"),
    ("worker-cpu", ["environment", "PREFORK_MAX_MEMORY_PER_CHILD"], "524288",
     "worker-cpu: 2 prefork children of up to 512 MiB"),
    ("worker", ["environment", "WORKER_CONCURRENCY"], "100",
     "MARIADB_MAX_CONNECTIONS=100 is below the 117 connections"),
    ("mariadb", ["environment", "MARIADB_INNODB_BUFFER_POOL_SIZE"], "700M",
     "innodb_buffer_pool_size 700 MiB is above 75% of the container's limit of 768 MiB"),
    ("redis", ["environment", "REDIS_MAXMEMORY"], "256mb",
     "REDIS_MAXMEMORY 256 MiB is above 75% of the container's limit of 256 MiB"),
    ("worker", ["stop_grace_period"], "5m0s", "stopwaitsecs 330 s must be below docker's stop_grace_period 300 s"),
    ("worker", ["environment", "TASK_TIME_LIMIT"], "400", "stopwaitsecs 330 s must be at least TASK_TIME_LIMIT 400 s"),
    ("worker", ["environment", "BROKER_VISIBILITY_TIMEOUT"], "300",
     "BROKER_VISIBILITY_TIMEOUT 300 s must exceed TASK_TIME_LIMIT 300 s"),
    ("worker-cpu", ["stop_grace_period"], "4m0s", "worker-cpu: stop_grace_period 240 s must exceed TASK_TIME_LIMIT"),
    ("web", ["deploy"], {}, "no memory limit (deploy.resources.limits.memory) for: web"),
])
def test_each_rule_fires_with_its_numbers(small, service, path, value, message):
    problems = check_sizing.violations(broken(small, service, path, value))
    assert any(message in p for p in problems), problems


def test_each_rule_checks_only_what_it_states(small):
    # A stack that breaks one rule is reported by that rule alone.
    breaks_connections = broken(small, "worker", ["environment", "WORKER_CONCURRENCY"], "100")
    reported = {check.__name__ for _, check in check_sizing.RULES if check(check_sizing.Sizes(breaks_connections))}
    assert reported == {"connections_fit_mariadb_and_redis"}


def test_a_stack_without_an_overlay_is_refused():
    problems = check_sizing.violations(declared())
    assert any("no host size (x-host)" in p for p in problems)


def test_every_worker_replica_is_counted(small):
    assert check_sizing.violations(small, worker_replicas=1) == []
    problems = check_sizing.violations(small, worker_replicas=2, worker_hosts=2)
    assert any("MARIADB_MAX_CONNECTIONS=100 is below the" in p and "2 worker replicas x" in p
               for p in problems), problems
    fewer = declared("config/overlays/small.yaml", "tests/swarm.yaml")
    assert check_sizing.violations(fewer, worker_replicas=3, worker_hosts=1) == []
    problems = check_sizing.violations(fewer, worker_replicas=5, worker_hosts=1)
    assert any("5 replicas on 1 worker host(s) put 5 on one host" in p for p in problems), problems


def test_the_redis_clients_of_every_replica_are_counted():
    large = declared("config/overlays/large.yaml")
    problems = check_sizing.violations(large, worker_replicas=40, worker_hosts=40)
    assert any(p.startswith("redis: maxclients 10000 is below the") for p in problems), problems


def test_the_readme_lists_every_rule_as_the_code_states_it():
    readme = " ".join((ROOT / "README.md").read_text().split())
    missing = [rule for rule in check_sizing.rules() if f"- {' '.join(rule.split())}" not in readme]
    assert not missing, f"README.md's Sizing must list what scripts/check-sizing --rules prints: {missing}"


@pytest.mark.parametrize("text, expected", [("4g", 4 * 1024**3), ("192mb", 192 * 1024**2), ("256M", 256 * 1024**2),
                                            ("805306368", 805306368), ("1kb", 1024)])
def test_sizes_read_as_redis_mariadb_and_docker_read_them(text, expected):
    assert check_sizing.size(text) == expected


@pytest.mark.parametrize("text, expected", [("6m0s", 360), ("1h", 3600), ("330s", 330), ("1m30s", 90)])
def test_compose_durations(text, expected):
    assert check_sizing.seconds(text) == expected
