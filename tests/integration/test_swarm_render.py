"""The Docker Swarm stack rendered (stackctl/swarm.py) from compose.yaml and the small overlay as
`docker compose config` reads them: placement, secrets, what carries over and what is dropped.
(On a real swarm: test_swarm.py.)"""

import copy
import json

import pytest

from stackctl import check_sizing, swarm

REGISTRY = "registry.example:5000"


@pytest.fixture(scope="module")
def model(env_file):
    return check_sizing.compose_model(["--env-file", str(env_file), "-f", "compose.yaml",
                                       "-f", "config/overlays/small.yaml", "--profile", "loadtest"])


@pytest.fixture(scope="module")
def rendered(model):
    return swarm.render(copy.deepcopy(model), "mystack", REGISTRY, 2)


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
    values = swarm.secret_values(model["services"])
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
    with pytest.raises(swarm.RenderError, match="web uses privileged"):
        swarm.render(changed, "mystack", REGISTRY, 1)


def test_a_secret_with_a_dollar_reaches_its_file_as_the_operator_wrote_it(model):
    changed = copy.deepcopy(model)
    for name in ("web", "worker"):  # as `docker compose config` writes ESI_SSO_CLIENT_SECRET=pa$word
        changed["services"][name]["environment"]["ESI_SSO_CLIENT_SECRET"] = "pa$$word"
    stack_file, files, _ = swarm.render(changed, "mystack", REGISTRY, 1)
    assert files["esi_sso_client_secret"] == "pa$word"
    assert stack_file["services"]["web"]["environment"]["ESI_SSO_CLIENT_SECRET_FILE"] == "/run/secrets/esi_sso_client_secret"


def test_a_container_waiting_for_the_schema_gets_the_migrations_time_before_its_health_counts(model, rendered):
    services = rendered[0]["services"]
    assert model["services"]["web"]["healthcheck"]["start_period"] == "1m0s"
    assert services["web"]["healthcheck"]["start_period"] == "360s"
    assert services["redis"]["healthcheck"] == {**model["services"]["redis"]["healthcheck"],
                                                "test": services["redis"]["healthcheck"]["test"]}
