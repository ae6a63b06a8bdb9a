"""Bad configuration stops start-up before anything runs, with the variable named; the overlays
and the sizing command as `docker compose` reads the files."""

import subprocess

import environment
import pytest

from stackctl import check_sizing, envfile
from stackctl.stack import ROOT, Stack
from tests.conftest import IMAGE_TAG


def test_a_missing_secret_stops_compose_before_any_container_exists(tmp_path, built_images):
    env_file = tmp_path / "broken.env"
    envfile.write_env_file(str(env_file))
    lines = [line for line in env_file.read_text().splitlines() if not line.startswith("REDIS_PASSWORD=")]
    env_file.write_text("\n".join(lines + ["COMPOSE_PROJECT_NAME=myauth-broken"]) + "\n")

    result = Stack(env_file).compose("up", "--detach", check=False)

    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr
    assert Stack(env_file).compose("ps", "--all", "--quiet").stdout.strip() == ""


@pytest.mark.parametrize("name, value", [
    ("WORKER_CONCURRENCY", "ten"),
    ("SECRET_KEY", "wow I'm a really bad default secret key"),  # Alliance Auth's default
    ("REDIS_PASSWORD", "changeme" * 5),
])
def test_an_app_container_with_a_malformed_value_or_a_default_secret_refuses_to_start(built_images, name, value):
    result = subprocess.run(["docker", "run", "--rm", "-e", f"{name}={value}", f"myauth-app:{IMAGE_TAG}", "true"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{name}={value!r} is not valid" in result.stderr


@pytest.mark.parametrize("image, secret", [(f"myauth-redis:{IMAGE_TAG}", "REDISCLI_AUTH"),
                                           (f"myauth-mariadb:{IMAGE_TAG}", "MARIADB_ROOT_PASSWORD")])
def test_redis_and_mariadb_refuse_to_start_without_their_password(built_images, image, secret):
    result = subprocess.run(["docker", "run", "--rm", image], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert secret in result.stderr


# The overlays and the sizing command, as `docker compose config` reads the files (the rules
# themselves: tests/unit/test_sizing.py).
OVERLAYS = ["small", "medium", "large"]


def compose_model(env_file, *files):
    arguments = ["--env-file", str(env_file)] + [a for f in ("compose.yaml", *files) for a in ("-f", f)]
    return check_sizing.compose_model(arguments)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_as_compose_reads_it_passes_every_sizing_rule(env_file, overlay):
    assert check_sizing.violations(compose_model(env_file, f"config/overlays/{overlay}.yaml")) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_change_sizes_only(env_file, overlay):
    base, layered = compose_model(env_file), compose_model(env_file, f"config/overlays/{overlay}.yaml")
    sizes = {v.name for v in environment.VARIABLES if not v.in_env_file} | {
        "REDIS_MAXMEMORY", "MARIADB_MAX_CONNECTIONS", "MARIADB_INNODB_BUFFER_POOL_SIZE"}
    for name, service in layered["services"].items():
        added = set(service.get("environment") or {}) - set(base["services"][name].get("environment") or {})
        assert added <= sizes, f"{overlay} sets non-size variables on {name}: {added - sizes}"
        unsized = {k: v for k, v in service.items() if k not in ("environment", "deploy")}
        assert unsized == {k: v for k, v in base["services"][name].items() if k not in ("environment", "deploy")}
    assert {k for k in layered if k != "x-host"} == set(base)


def test_an_operators_override_file_that_breaks_a_rule_is_refused_by_the_command(env_file, tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text('services:\n  worker:\n    environment:\n      WORKER_CONCURRENCY: "90"\n')
    command = [ROOT / "scripts" / "check-sizing", "--env-file", str(env_file),
               "-f", "compose.yaml", "-f", "config/overlays/small.yaml", "-f", str(override)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "MARIADB_MAX_CONNECTIONS=100 is below the 107 connections" in result.stderr
    assert subprocess.run(command[:-2], capture_output=True, text=True).returncode == 0


def test_check_sizing_refuses_too_many_replicas_from_the_command_line(env_file):
    command = [ROOT / "scripts" / "check-sizing", "--worker-replicas", "2", "--worker-hosts", "2", "--env-file", str(env_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "2 worker replicas x" in result.stderr
    result = subprocess.run([*command[:1], "--worker-replicas", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "at least 1" in result.stderr
