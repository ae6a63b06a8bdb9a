"""Security defaults, checked on the running test stack and on the built images."""

import socket
import subprocess

import pytest

from stackctl import check_sizing
from tests.conftest import IMAGE_TAG

IMAGES = [f"myauth-app:{IMAGE_TAG}", f"myauth-redis:{IMAGE_TAG}", f"myauth-mariadb:{IMAGE_TAG}", f"myauth-prometheus:{IMAGE_TAG}"]


def host_config(stack, service):
    return stack.inspect(service)["HostConfig"]


@pytest.mark.parametrize("service", check_sizing.LONG_RUNNING)
def test_service_runs_without_capabilities_or_privilege_escalation_on_a_read_only_root(stack, service):
    config = host_config(stack, service)
    assert config["CapDrop"] == ["ALL"] and not config["CapAdd"]
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert config["ReadonlyRootfs"] is True
    result = stack.compose("exec", "-T", service, "sh", "-c", "touch /etc/probe", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_only_the_web_and_metrics_ports_are_published_and_only_on_loopback(stack, env):
    published = {}
    for service in sorted(stack.running()):
        ports = stack.inspect(service)["NetworkSettings"]["Ports"]
        published[service] = [b for bindings in ports.values() if bindings for b in bindings]
    assert {s for s, bindings in published.items() if bindings} == {"web", "metrics"}
    assert {(b["HostIp"], b["HostPort"]) for b in published["web"]} == {("127.0.0.1", env["WEB_PORT"])}
    assert {(b["HostIp"], b["HostPort"]) for b in published["metrics"]} == {("127.0.0.1", env["METRICS_PORT"])}


def address(stack, service):
    return next(iter(stack.inspect(service)["NetworkSettings"]["Networks"].values()))["IPAddress"]


def test_redis_refuses_a_client_without_the_password_inside_the_network_and_from_the_host(stack):
    probe = ("import socket; s = socket.create_connection(('redis', 6379), timeout=5); "
             "s.sendall(b'PING\\r\\n'); print(s.recv(100).decode())")
    assert stack.exec("web", "python3", "-c", probe).startswith("-NOAUTH")
    wrong = stack.exec("redis", "sh", "-c", "REDISCLI_AUTH=wrong-password redis-cli ping 2>&1 || true")
    assert "WRONGPASS" in wrong and "PONG" not in wrong
    # No port of Redis is published, but root on the Docker host can reach any container's
    # bridge address: there too it wants the password.
    with socket.create_connection((address(stack, "redis"), 6379), timeout=5) as client:
        client.sendall(b"PING\r\n")
        assert client.recv(100).startswith(b"-NOAUTH")


def test_mariadb_root_cannot_log_in_over_the_network_even_with_its_password(stack):
    login = 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb --user=root -N -e "SELECT 1" {network} 2>&1 || true'
    assert stack.exec("mariadb", "sh", "-c", login.format(network="")).strip() == "1"  # on its own socket
    remote = stack.exec("mariadb", "sh", "-c", login.format(network=f"--protocol=tcp --host={address(stack, 'mariadb')}"))
    assert "Access denied for user 'root'" in remote, remote


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_image_carries_no_compiler_or_build_tool(built_images, image):
    tools = "gcc cc c++ g++ make ld as pkg-config"
    result = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                             f"for t in {tools}; do command -v $t; done; true"], capture_output=True, text=True)
    assert result.stdout.strip() == "", f"{image} has: {result.stdout.split()}"
