"""Each overlay, brought up in turn, really runs with the limits and concurrency it declares.

Docker refuses a CPU limit above the CPUs of the machine it runs on, so on a smaller machine
than the overlay's host the test caps CPU limits at this machine's count (an extra override
file) and expects min(declared, CPUs here); memory limits and every concurrency are exact.
"""

import json
import os

import pytest

from stackctl import check_sizing
from stackctl.stack import Stack
from tests.conftest import PROJECT
from tests.integration.conftest import start_stack, write_env_file


def declared(env_file) -> dict:
    return check_sizing.compose_model(["--env-file", str(env_file)])


def assert_running_as_declared(stack, model):
    services = model["services"]
    cpus_here = os.cpu_count()
    for service in sorted(stack.running()):
        inspected = stack.inspect(service)["HostConfig"]
        limits = services[service]["deploy"]["resources"]["limits"]
        assert inspected["Memory"] == int(limits["memory"]), service
        assert inspected["NanoCpus"] == round(min(float(limits["cpus"]), cpus_here) * 1e9), service

    worker = services["worker"]["environment"]
    cpu = services["worker-cpu"]["environment"]
    stats = stack.celery_stats()
    concurrency = {node.split("@")[0]: s["pool"]["max-concurrency"] for node, s in stats.items()}
    expected = {f"worker_{n:02d}": int(worker["WORKER_CONCURRENCY"]) for n in range(int(worker["WORKER_PROGRAMS"]))}
    expected |= {"worker_services_00": 1, "cpu": int(cpu["PREFORK_CONCURRENCY"])}
    assert concurrency == expected

    gunicorn = stack.exec("web", "sh", "-c", "ps -eo args= | grep -c '^/opt/venv/bin/python3 /opt/venv/bin/gunicorn'")
    assert int(gunicorn) == int(services["web"]["environment"]["GUNICORN_WORKERS"]) + 1  # + the master

    maxmemory = stack.exec("redis", "redis-cli", "config", "get", "maxmemory").split()[1]
    assert int(maxmemory) == check_sizing.size(services["redis"]["environment"]["REDIS_MAXMEMORY"])

    mariadb = services["mariadb"]["environment"]
    variables = stack.exec("mariadb", "sh", "-c", 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -N -e '
                       '"SELECT @@max_connections, @@innodb_buffer_pool_size"').split()
    assert [int(v) for v in variables] == [int(mariadb["MARIADB_MAX_CONNECTIONS"]),
                                          check_sizing.size(mariadb["MARIADB_INNODB_BUFFER_POOL_SIZE"])]


def test_small_overlay_runs_as_declared(stack, env_file):
    assert_running_as_declared(stack, declared(env_file))


def cap_cpus_at_this_machine(env_file, model, tmp_path):
    """Add an override file lowering CPU limits above this machine's CPU count to that count."""
    capped = {name: {"deploy": {"resources": {"limits": {"cpus": str(os.cpu_count())}}}}
              for name, service in model["services"].items()
              if float(service["deploy"]["resources"]["limits"]["cpus"]) > os.cpu_count()}
    override = tmp_path / "cpu-cap.yaml"
    override.write_text(json.dumps({"services": capped}))  # JSON is YAML
    text = env_file.read_text()
    compose_file = next(line for line in text.splitlines() if line.startswith("COMPOSE_FILE="))
    env_file.write_text(text.replace(compose_file, f"{compose_file}:{override}"))


@pytest.mark.parametrize("overlay", ["medium", "large"])
def test_overlay_runs_as_declared(built_images, tmp_path, overlay):
    env_file = write_env_file(tmp_path / f"{overlay}.env", f"{PROJECT}-{overlay}", overlay)
    model = declared(env_file)
    cap_cpus_at_this_machine(env_file, model, tmp_path)
    compose = start_stack(env_file)
    try:
        assert_running_as_declared(Stack(env_file), model)
    finally:
        compose.stop()
