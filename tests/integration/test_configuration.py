"""Bad configuration stops start-up before anything runs, with the variable named."""

import subprocess

import pytest

from tests.conftest import IMAGE_TAG, compose, environment


def test_a_missing_secret_stops_compose_before_any_container_exists(tmp_path, built_images):
    env_file = tmp_path / "broken.env"
    environment.main(["generate", str(env_file)])
    lines = [line for line in env_file.read_text().splitlines() if not line.startswith("REDIS_PASSWORD=")]
    env_file.write_text("\n".join(lines + ["COMPOSE_PROJECT_NAME=myauth-broken"]) + "\n")

    result = compose(env_file, "up", "--detach")

    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr
    assert compose(env_file, "ps", "--all", "--quiet").stdout.strip() == ""


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
