"""Shared fixtures: one real stack, built from this checkout and started once per session.

The stack runs as its own compose project (myauth-test, or $MYAUTH_TEST_PROJECT), on images
tagged with that name, with its own generated .env (small overlay, the optional prefork worker
and Prometheus enabled), free web and metrics ports and no outbound periodic tasks, so it never
touches an operator's stack, data or images, nor another checkout's test run, and never calls
out of this machine.
It is torn down with its volumes at the end.
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
sys.path.insert(0, str(ROOT / "myauth"))  # monitoring/: the Redis keys the stack writes (no Django)
import environment  # noqa: E402  (myauth/myauth/environment.py: stdlib only)

PROJECT = os.environ.get("MYAUTH_TEST_PROJECT", "myauth-test")
IMAGE_TAG = PROJECT  # every test stack of a run uses the images the run built


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


def write_env_file(path: Path, project: str, overlay: str = "small", **settings: str) -> Path:
    """A fresh .env for a test project, written by the same generator operators use; `settings`
    replace the test stack's own (another image tag, fewer profiles)."""
    port = free_port()
    environment.write_env_file(str(path), **{
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_FILE": f"compose.yaml:config/overlays/{overlay}.yaml:tests/stack.yaml",
        "COMPOSE_PROFILES": "cpu,monitoring",
        "IMAGE_TAG": IMAGE_TAG,
        "WEB_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "SITE_URL": f"http://localhost:{port}",
        "SCHEDULE_OUTBOUND_TASKS": "false",
        "DIAGNOSTICS_ENABLED": "true",
        **settings,
    })
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


def compose(env_file: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`docker compose` on the stack of this env file (its project, overlay and profiles)."""
    return subprocess.run(["docker", "compose", "--env-file", str(env_file), *args], cwd=ROOT,
                          capture_output=True, text=True, check=check)


def docker(*arguments: str, check: bool = True, **options) -> str:
    """A docker command's output; with check, fail the test with its output if it fails."""
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, **options)
    assert not check or result.returncode == 0, (
        f"docker {' '.join(arguments[:4])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def run_in(stack: DockerCompose, service: str, *command: str, **environment: str) -> str:
    """Run a command in a running service container, with these variables set; fail the test with
    its output if it fails."""
    flags = [flag for name, value in environment.items() for flag in ("-e", f"{name}={value}")]
    result = subprocess.run(
        [*stack.docker_compose_command(), "exec", "-T", *flags, service, *command], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command} in {service} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pytest_addoption(parser):
    parser.addoption("--full-soak", action="store_true",
                     help="the delivery soak at full length (10,000 tasks, 6 kills) instead of CI's short one")
    parser.addoption("--full-swarm", action="store_true",
                     help="test_swarm with the rolling update of the workers (3-4 more minutes)")


def pytest_collection_modifyitems(items):
    # On Docker 20.10, leaving a swarm breaks name resolution in the containers of every compose
    # stack running then (moby/moby#45144): the tests that do it run after every other test.
    items.sort(key=lambda item: item.get_closest_marker("leaves_swarm") is not None)


MEASURED = []


@pytest.fixture(scope="session")
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

