"""Fixtures of the tests that drive the running test stack with the diagnostics tasks."""

import pytest

from tests.conftest import check_sizing, environment
from tests.integration.diagnostics import Diagnostics

# README "Guarantees": the tasks a dead worker process held run again this soon after its death.
RERUN_WITHIN_SECONDS = 30


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
