"""What every test shares: this checkout, the name of its test stack, and the run's options.

The real stack's fixtures (built from this checkout and started once per session, with
testcontainers) are the integration tests' (tests/integration/conftest.py); the unit tests need
neither Docker nor Compose. pytest.ini puts this checkout and myauth/ on the path, as
scripts/internal/stackctl does for the host's tools.
"""

import os
import subprocess

PROJECT = os.environ.get("MYAUTH_TEST_PROJECT", "myauth-test")
IMAGE_TAG = PROJECT  # every test stack of a run uses the images the run built


def docker(*arguments: str, check: bool = True, **options) -> str:
    """A docker command's output; with check, fail the test with its output if it fails."""
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, **options)
    assert not check or result.returncode == 0, (
        f"docker {' '.join(arguments[:4])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
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


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured")
        for line in MEASURED:
            terminalreporter.line(line)
