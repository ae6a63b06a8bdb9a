"""Shared fixtures: one real stack, built from this checkout and started once per session.

The stack runs as its own compose project (myauth-test) with its own generated .env (small
overlay, the optional prefork worker enabled), a free web port and no outbound periodic tasks,
so it never touches an operator's stack or data and never calls out of this machine. It is
torn down with its volumes at the end.
"""

import importlib.machinery
import json
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testcontainers.compose import DockerCompose

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "myauth" / "myauth"))
import environment  # noqa: E402  (myauth/myauth/environment.py: stdlib only)

PROJECT = "myauth-test"


def load_script(name: str):
    """Import one of scripts/ (Python files without a .py suffix) as a module."""
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "scripts" / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


check_sizing = load_script("check-sizing")
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # its image cannot be pulled here


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_env_file(path: Path, project: str, overlay: str = "small") -> Path:
    """A fresh .env for a test project, written by the same generator operators use."""
    port = free_port()
    environment.write_env_file(
        str(path),
        COMPOSE_PROJECT_NAME=project,
        COMPOSE_FILE=f"compose.yaml:config/overlays/{overlay}.yaml:tests/stack.yaml",
        COMPOSE_PROFILES="cpu",
        WEB_PORT=str(port),
        SITE_URL=f"http://localhost:{port}",
        SCHEDULE_OUTBOUND_TASKS="false",
        DIAGNOSTICS_ENABLED="true",
    )
    return path


def start_stack(env_file: Path) -> DockerCompose:
    """`docker compose up --wait` with this env file; on failure, fail with every service's log."""
    compose = DockerCompose(ROOT, env_file=str(env_file), wait=True)
    try:
        compose.start()
    except subprocess.CalledProcessError as error:
        logs = subprocess.run([*compose.docker_compose_command(), "logs", "--no-color"],
                              capture_output=True, text=True).stdout
        compose.stop()
        pytest.fail(f"the stack did not become healthy: {error.stderr!r}\n{logs[-20000:]}")
    return compose


@pytest.fixture(scope="session")
def env_file(tmp_path_factory) -> Path:
    return write_env_file(tmp_path_factory.mktemp("stack") / "test.env", PROJECT)


@pytest.fixture(scope="session")
def env(env_file) -> dict:
    return environment.read_env_file(str(env_file))


@pytest.fixture(scope="session")
def built_images(env_file) -> None:
    subprocess.run([ROOT / "scripts" / "build"], env={**os.environ, "ENV_FILE": str(env_file)}, check=True)


@pytest.fixture(scope="session")
def stack(built_images, env_file):
    compose = start_stack(env_file)
    yield compose
    compose.stop()


@pytest.fixture(scope="session")
def site(stack, env) -> str:
    return env["SITE_URL"]


def inspect(container_id: str) -> dict:
    """`docker inspect` of one container."""
    result = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)[0]


def run_in(stack: DockerCompose, service: str, *command: str) -> str:
    """Run a command in a running service container; fail the test with its output if it fails."""
    result = subprocess.run(
        [*stack.docker_compose_command(), "exec", "-T", service, *command], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command} in {service} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pytest_addoption(parser):
    parser.addoption("--full-soak", action="store_true",
                     help="the delivery soak at full length (10,000 tasks, 6 kills) instead of CI's short one")


MEASURED = []


@pytest.fixture
def report():
    """Record a figure a test measured; the run prints them all at its end (README quotes them)."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured")
        for line in MEASURED:
            terminalreporter.line(line)


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

