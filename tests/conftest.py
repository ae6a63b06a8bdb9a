"""Shared fixtures: one real stack, built from this checkout and started once per session.

The stack runs as its own compose project (myauth-test) with its own generated .env, a free
web port and no outbound periodic tasks, so it never touches an operator's stack or data and
never calls out of this machine. It is torn down with its volumes at the end.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from testcontainers.compose import DockerCompose

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "myauth" / "myauth"))
import environment  # noqa: E402  (myauth/myauth/environment.py: stdlib only)

PROJECT = "myauth-test"
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # its image cannot be pulled here


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def env_file(tmp_path_factory) -> Path:
    """A fresh .env for the test project, written by the same generator operators use."""
    path = tmp_path_factory.mktemp("stack") / "test.env"
    environment.main(["generate", str(path)])
    port = free_port()
    with path.open("a") as env:
        env.write(
            f"COMPOSE_PROJECT_NAME={PROJECT}\nWEB_PORT={port}\nSITE_URL=http://localhost:{port}\n"
            "SCHEDULE_OUTBOUND_TASKS=false\n"
        )
    return path


@pytest.fixture(scope="session")
def env(env_file) -> dict:
    return environment.read_env_file(str(env_file))


@pytest.fixture(scope="session")
def built_images(env_file) -> None:
    subprocess.run([ROOT / "scripts" / "build"], env={**os.environ, "ENV_FILE": str(env_file)}, check=True)


@pytest.fixture(scope="session")
def stack(built_images, env_file):
    compose = DockerCompose(ROOT, compose_file_name="compose.yaml", env_file=str(env_file), wait=True)
    try:
        compose.start()
    except subprocess.CalledProcessError as error:
        logs = subprocess.run([*compose.docker_compose_command(), "logs", "--no-color"],
                              capture_output=True, text=True).stdout
        compose.stop()
        pytest.fail(f"the stack did not become healthy: {error.stderr!r}\n{logs[-20000:]}")
    yield compose
    compose.stop()


@pytest.fixture(scope="session")
def site(stack, env) -> str:
    return env["SITE_URL"]


def run_in(stack: DockerCompose, service: str, *command: str) -> str:
    """Run a command in a running service container; fail the test with its output if it fails."""
    result = subprocess.run(
        [*stack.docker_compose_command(), "exec", "-T", service, *command], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command} in {service} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def wait_for_log(stack: DockerCompose, service: str, needle: str, timeout: float = 60) -> str:
    """Poll a service's log until a line contains `needle`; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        stdout, _ = stack.get_logs(service)
        for line in stdout.splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{needle!r} not in the {service} log within {timeout} s"
        time.sleep(1)

