"""The Docker Swarm stack rendered from compose.yaml and an overlay (scripts/swarm_stack.py), and the
sizing rules for worker replicas spread over hosts (scripts/check-sizing)."""

import copy
import json
import subprocess

import pytest

from tests.conftest import ROOT, check_sizing, load_script

swarm_stack = load_script("swarm_stack.py")
REGISTRY = "registry.example:5000"


@pytest.fixture(scope="module")
def model(env_file):
    return check_sizing.compose_model(["--env-file", str(env_file), "-f", "compose.yaml",
                                       "-f", "config/overlays/small.yaml", "--profile", "loadtest"])


@pytest.fixture(scope="module")
def rendered(model):
    return swarm_stack.render(copy.deepcopy(model), "mystack", REGISTRY, 2)


def test_every_service_is_placed_by_node_label_workers_on_worker_hosts_the_rest_on_the_core_node(rendered):
    services = rendered[0]["services"]
    for name, service in services.items():
        expected = "node.labels.myauth.worker == true" if name in ("worker", "worker-cpu") else "node.labels.myauth.role == core"
        assert service["deploy"]["placement"]["constraints"] == [expected], name
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["beat"]["deploy"]["replicas"] == 1 and services["beat"]["deploy"]["update_config"]["order"] == "stop-first"
    assert "registry" not in services


def test_secrets_become_swarm_secrets_and_appear_nowhere_in_the_stack_file(model, rendered):
    stack_file, files, _ = rendered
    values = swarm_stack.secret_values(model["services"])
    assert set(values) == {"SECRET_KEY", "MARIADB_ROOT_PASSWORD", "MARIADB_PASSWORD", "REDIS_PASSWORD"}
    assert set(files) == {name.lower() for name in values}
    text = json.dumps(stack_file)
    assert not [name for name, value in values.items() if value in text]
    redis = stack_file["services"]["redis"]
    # The redis image reads the password as REDISCLI_AUTH: found by its value, given as a file.
    assert redis["environment"]["REDISCLI_AUTH_FILE"] == "/run/secrets/redis_password"
    assert redis["secrets"] == [{"source": "redis_password", "target": "redis_password"}]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "secret-env"]
    assert stack_file["secrets"]["redis_password"]["name"].startswith("mystack_redis_password_")


def test_sizes_health_checks_grace_and_hardening_carry_over_and_what_swarm_cannot_take_is_gone(model, rendered):
    services = rendered[0]["services"]
    worker, source = services["worker"], model["services"]["worker"]
    assert worker["deploy"]["resources"]["limits"] == {"cpus": str(source["deploy"]["resources"]["limits"]["cpus"]),
                                                       "memory": source["deploy"]["resources"]["limits"]["memory"]}
    assert worker["environment"]["WORKER_CONCURRENCY"] == source["environment"]["WORKER_CONCURRENCY"]
    assert worker["stop_grace_period"] == source["stop_grace_period"]
    assert worker["healthcheck"]["test"] == ["CMD", "secret-env", "worker-healthy"]
    assert worker["deploy"]["update_config"]["order"] == "start-first"
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"], name
        assert not set(service) & {"build", "depends_on", "restart", "profiles", "ports", "security_opt"}, name
        assert service["image"].startswith(f"{REGISTRY}/myauth-"), name


def test_migrate_is_a_job_and_the_app_services_wait_for_the_schema(rendered):
    services = rendered[0]["services"]
    assert services["migrate"]["deploy"]["mode"] == "replicated-job"
    waiting = {name for name, service in services.items() if service.get("environment", {}).get("WAIT_FOR_SCHEMA")}
    assert waiting == {"web", "worker", "worker-cpu", "beat"}


def test_a_compose_key_the_renderer_does_not_know_stops_it(model):
    changed = copy.deepcopy(model)
    changed["services"]["web"]["privileged"] = True
    with pytest.raises(swarm_stack.StackError, match="web uses privileged"):
        swarm_stack.render(changed, "mystack", REGISTRY, 1)


@pytest.mark.parametrize("core, workers, message", [
    ([], ["a"], "exactly one ready node must be labelled myauth.role=core"),
    (["a", "b"], ["a"], "found 2: a, b"),
    (["a"], [], "no ready node is labelled as a worker host (myauth.worker=true)"),
])
def test_nodes_without_the_labels_are_refused_naming_what_is_missing(core, workers, message):
    with pytest.raises(swarm_stack.StackError) as refused:
        swarm_stack.check_nodes(core, workers)
    assert message in str(refused.value)


def test_check_sizing_counts_every_worker_replica(env_file):
    small = check_sizing.compose_model(["--env-file", str(env_file), "-f", "compose.yaml", "-f", "config/overlays/small.yaml"])
    assert check_sizing.violations(small, worker_replicas=1) == []
    problems = check_sizing.violations(small, worker_replicas=2, worker_hosts=2)
    assert any("MARIADB_MAX_CONNECTIONS=100 is below the 169 connections" in p and "2 worker replicas x" in p
               for p in problems), problems
    fewer = check_sizing.compose_model(["--env-file", str(env_file), "-f", "compose.yaml", "-f", "config/overlays/small.yaml",
                                        "-f", "tests/swarm.yaml"])
    assert check_sizing.violations(fewer, worker_replicas=3, worker_hosts=1) == []
    problems = check_sizing.violations(fewer, worker_replicas=5, worker_hosts=1)
    assert any("5 replicas on 1 worker host(s) put 5 on one host" in p for p in problems), problems


def test_check_sizing_counts_redis_clients_of_every_replica(env_file):
    large = check_sizing.compose_model(["--env-file", str(env_file), "-f", "compose.yaml", "-f", "config/overlays/large.yaml"])
    problems = check_sizing.violations(large, worker_replicas=40, worker_hosts=40)
    assert any(p.startswith("redis: maxclients 10000 is below the") for p in problems), problems


def test_check_sizing_refuses_too_many_replicas_from_the_command_line(env_file):
    command = [ROOT / "scripts" / "check-sizing", "--worker-replicas", "2", "--worker-hosts", "2", "--env-file", str(env_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "2 worker replicas x" in result.stderr
    result = subprocess.run([*command[:1], "--worker-replicas", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "at least 1" in result.stderr


def test_a_secret_with_a_dollar_reaches_its_file_as_the_operator_wrote_it(model):
    changed = copy.deepcopy(model)
    for name in ("web", "worker"):  # as `docker compose config` writes ESI_SSO_CLIENT_SECRET=pa$word
        changed["services"][name]["environment"]["ESI_SSO_CLIENT_SECRET"] = "pa$$word"
    stack_file, files, _ = swarm_stack.render(changed, "mystack", REGISTRY, 1)
    assert files["esi_sso_client_secret"] == "pa$word"
    assert stack_file["services"]["web"]["environment"]["ESI_SSO_CLIENT_SECRET_FILE"] == "/run/secrets/esi_sso_client_secret"


def test_secret_env_sets_each_variable_from_its_file_and_refuses_an_unreadable_one(tmp_path):
    shim = ROOT / "images" / "shared" / "secret-env"
    (tmp_path / "redis_password").write_text("s3cret-value\n")
    show = ["sh", "-c", 'echo "$REDISCLI_AUTH|${REDISCLI_AUTH_FILE:-gone}|$PLAIN"']
    base = {"PATH": "/usr/bin:/bin", "PLAIN": "kept"}
    result = subprocess.run(["sh", shim, *show], env={**base, "REDISCLI_AUTH_FILE": str(tmp_path / "redis_password")},
                            capture_output=True, text=True)
    assert result.stdout == "s3cret-value|gone|kept\n"
    assert subprocess.run(["sh", shim, *show], env=base, capture_output=True, text=True).stdout == "|gone|kept\n"
    result = subprocess.run(["sh", shim, "true"], env={**base, "SECRET_KEY_FILE": str(tmp_path / "missing")},
                            capture_output=True, text=True)
    assert result.returncode == 1 and f"SECRET_KEY_FILE={tmp_path / 'missing'} is not a readable file" in result.stderr


def test_a_container_waiting_for_the_schema_gets_the_migrations_time_before_its_health_counts(model, rendered):
    services = rendered[0]["services"]
    assert model["services"]["web"]["healthcheck"]["start_period"] == "1m0s"
    assert services["web"]["healthcheck"]["start_period"] == "360s"
    assert services["redis"]["healthcheck"] == {**model["services"]["redis"]["healthcheck"],
                                                "test": services["redis"]["healthcheck"]["test"]}
