"""Bad configuration stops start-up before anything runs, with the variable named."""

import subprocess

from tests.conftest import ROOT, environment


def compose(env_file, *args):
    return subprocess.run(["docker", "compose", "--env-file", str(env_file), *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_a_missing_secret_stops_compose_before_any_container_exists(tmp_path, built_images):
    env_file = tmp_path / "broken.env"
    environment.main(["generate", str(env_file)])
    lines = [l for l in env_file.read_text().splitlines() if not l.startswith("REDIS_PASSWORD=")]
    env_file.write_text("\n".join(lines + ["COMPOSE_PROJECT_NAME=myauth-broken"]) + "\n")

    result = compose(env_file, "up", "--detach")

    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr
    assert compose(env_file, "ps", "--all", "--quiet").stdout.strip() == ""


def test_an_app_container_with_a_malformed_value_refuses_to_start(built_images):
    result = subprocess.run(["docker", "run", "--rm", "-e", "WORKER_CONCURRENCY=ten", "myauth-app:latest", "true"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "WORKER_CONCURRENCY='ten' is not valid" in result.stderr
