"""The real stack the integration tests share: built from this checkout and started once per
session as its own compose project (myauth-test, or $MYAUTH_TEST_PROJECT), on images tagged
with that name, with its own generated .env (small overlay, the optional prefork worker and
Prometheus enabled), free web and metrics ports and no outbound periodic tasks, so it never
touches an operator's stack, data or images, nor another checkout's test run, and never calls
out of this machine. testcontainers starts it and tears it down with its volumes at the end;
the tests drive it through stackctl's Stack.
"""

import socket
import subprocess
import time
from pathlib import Path

import environment
import pytest
from testcontainers.compose import DockerCompose

from stackctl import check_sizing, envfile
from stackctl.stack import ROOT, Stack
from tests.conftest import IMAGE_TAG, MEASURED, PROJECT
from tests.integration.diagnostics import Diagnostics

# README "Guarantees": the tasks a dead worker process held run again this soon after its death.
RERUN_WITHIN_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_env_file(path: Path, project: str, overlay: str = "small", **settings: str) -> Path:
    """A fresh .env for a test project, written by the same generator operators use; `settings`
    replace the test stack's own (another image tag, fewer profiles)."""
    port = free_port()
    envfile.write_env_file(str(path), **{
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
    return envfile.read_env_file(str(env_file))


@pytest.fixture(scope="session")
def built_images(env_file) -> None:
    Stack(env_file).build()


@pytest.fixture(scope="session")
def stack(built_images, env_file) -> Stack:
    compose = start_stack(env_file)
    yield Stack(env_file)
    compose.stop()


@pytest.fixture(scope="session")
def site(stack, env) -> str:
    return env["SITE_URL"]


@pytest.fixture(scope="session")
def sizes(env_file) -> dict:
    """The sizes the test stack runs with: the environments of redis, worker and worker-cpu."""
    services = check_sizing.compose_model(["--env-file", str(env_file)])["services"]
    return {**services["redis"]["environment"], **services["worker"]["environment"],
            **services["worker-cpu"]["environment"]}


@pytest.fixture(scope="session")
def memmon_limit_mib(sizes) -> int:
    """memmon's limit of a gevent worker process, read as the stack reads it (environment.py)."""
    return environment.validate(sizes, ["WORKER_MEMORY_LIMIT"])["WORKER_MEMORY_LIMIT"] // 2**20


@pytest.fixture
def diag(stack):
    """Diagnostics on a stack that has finished every earlier test's tasks."""
    diagnostics = Diagnostics(stack)
    diagnostics.reset()
    return diagnostics


@pytest.fixture(scope="session")
def report():
    """Record a figure a test measured; the run prints them all at its end (docs/measured.md quotes them)."""
    return MEASURED.append


def wait_for_log(stack: Stack, service: str, needle: str, timeout: float = 60) -> str:
    """Poll a service's log until a line contains `needle`; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in stack.logs(service).splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{needle!r} not in the {service} log within {timeout} s"
        time.sleep(1)
