"""Sizing rules: the three overlays pass, and each rule fires on a stack that breaks it."""

import copy
import subprocess

import pytest

from tests.conftest import ROOT, check_sizing

OVERLAYS = ["small", "medium", "large"]


def model(env_file, *files):
    arguments = ["--env-file", str(env_file)] + [a for f in ("compose.yaml", *files) for a in ("-f", f)]
    return check_sizing.compose_model(arguments)


@pytest.fixture(scope="module")
def small(env_file):
    return model(env_file, "config/overlays/small.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_passes_every_rule(env_file, overlay):
    assert check_sizing.violations(model(env_file, f"config/overlays/{overlay}.yaml")) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_change_sizes_only(env_file, overlay):
    base, layered = model(env_file), model(env_file, f"config/overlays/{overlay}.yaml")
    sizes = {v.name for v in check_sizing.environment.VARIABLES if not v.in_env_file} | {
        "REDIS_MAXMEMORY", "MARIADB_MAX_CONNECTIONS", "MARIADB_INNODB_BUFFER_POOL_SIZE"}
    for name, service in layered["services"].items():
        added = set(service.get("environment") or {}) - set(base["services"][name].get("environment") or {})
        assert added <= sizes, f"{overlay} sets non-size variables on {name}: {added - sizes}"
        unsized = {k: v for k, v in service.items() if k not in ("environment", "deploy")}
        assert unsized == {k: v for k, v in base["services"][name].items() if k not in ("environment", "deploy")}
    assert {k for k in layered if k != "x-host"} == set(base)


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


def test_the_readme_lists_every_rule_as_the_code_states_it():
    readme = " ".join((ROOT / "README.md").read_text().split())
    missing = [rule for rule in check_sizing.rules() if f"- {' '.join(rule.split())}" not in readme]
    assert not missing, f"README.md's Sizing must list what scripts/check-sizing --rules prints: {missing}"


def test_a_stack_without_an_overlay_is_refused(env_file):
    problems = check_sizing.violations(model(env_file))
    assert any("no host size (x-host)" in p for p in problems)


def test_an_operators_override_file_that_breaks_a_rule_is_refused_by_the_command(env_file, tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text('services:\n  worker:\n    environment:\n      WORKER_CONCURRENCY: "90"\n')
    command = [ROOT / "scripts" / "check-sizing", "--env-file", str(env_file),
               "-f", "compose.yaml", "-f", "config/overlays/small.yaml", "-f", str(override)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "MARIADB_MAX_CONNECTIONS=100 is below the 107 connections" in result.stderr
    command = command[:-2]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("text, expected", [("4g", 4 * 1024**3), ("192mb", 192 * 1024**2), ("256M", 256 * 1024**2),
                                            ("805306368", 805306368), ("1kb", 1024)])
def test_sizes_read_as_redis_mariadb_and_docker_read_them(text, expected):
    assert check_sizing.size(text) == expected


@pytest.mark.parametrize("text, expected", [("6m0s", 360), ("1h", 3600), ("330s", 330), ("1m30s", 90)])
def test_compose_durations(text, expected):
    assert check_sizing.seconds(text) == expected
