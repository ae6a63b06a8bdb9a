"""The Docker Swarm stack, rendered from the compose model (`docker compose config`): one definition.

    scripts/internal/stackctl swarm --env-file .env --registry HOST:PORT --out DIR [--workers N] [--stack NAME]

Checks the swarm's nodes and the sizes (scripts/check-sizing, for N worker replicas), then writes
into DIR: stack.yaml (for `docker stack deploy`), secrets/ (one file per secret, read by `docker
stack deploy`), images (lines "local remote" to tag and push) and stack (the stack's name).
scripts/swarm-deploy runs it; nothing here changes the swarm.

What `docker stack deploy` cannot take is converted or dropped, each for a stated reason:
`build` (images come from the registry), `depends_on` (the app containers wait for the schema
instead: WAIT_FOR_SCHEMA, myauth/schema.py), `restart` (Swarm's restart policy), `profiles`
(compose already chose the services), `ports` (Swarm publishes only on every interface: nothing
is published; a reverse proxy joins the stack's network), `security_opt` (Swarm services cannot
set no-new-privileges; the processes still run as non-root users with no capabilities), `tmpfs`
(a tmpfs mount). Health checks of containers that wait for the schema start counting 5 minutes
later (the migrations run meanwhile). A key this module does not know stops the rendering.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import environment

from stackctl import check_sizing, envfile
from stackctl.stack import ROOT

# Node labels: adding a worker host is joining the swarm and labelling the node.
CORE_LABEL, WORKER_LABEL = ("myauth.role", "core"), ("myauth.worker", "true")
WORKER_SERVICES = ("worker", "worker-cpu")
NOT_IN_STACK = ("registry",)  # runs beside the swarm: the nodes pull the stack's images from it
CARRIED = {"image", "command", "entrypoint", "environment", "healthcheck", "stop_grace_period", "stop_signal",
           "read_only", "cap_drop", "cap_add", "user", "logging", "volumes", "networks", "deploy", "tmpfs"}
DROPPED = {"build", "depends_on", "restart", "profiles", "ports", "security_opt", "container_name", "pull_policy"}
SECRETS_DIR = "/run/secrets"
# Under compose a container starts after the migrations, on Swarm before them: its health
# check's start period (during which failures do not count) is longer by this much, so that Swarm
# does not replace a container that is only waiting for the migrate job.
SCHEMA_WAIT_ALLOWANCE_SECONDS = 300
# A worker replica being replaced finishes its running tasks first: Swarm sends SIGTERM (a warm
# shutdown under supervisord) and waits stop_grace_period; its successor starts first.
WORKER_UPDATE = {"parallelism": 1, "order": "start-first", "failure_action": "rollback", "monitor": "90s"}
# The web: the new task starts (and waits for the schema) while the old one still answers.
WEB_UPDATE = {"parallelism": 1, "order": "start-first", "failure_action": "rollback"}
# Beat: never two at once, not even during an update. (Redis and MariaDB are stop-first too,
# Swarm's default: the new task needs the old one's volume.)
BEAT_UPDATE = {"parallelism": 1, "order": "stop-first"}


class RenderError(Exception):
    """The stack cannot be rendered or deployed as asked; the message says what is missing."""


def constraint(label: tuple) -> str:
    return f"node.labels.{label[0]} == {label[1]}"


def secret_values(services: dict) -> dict:
    """{variable: value} of every non-empty secret variable the services are given."""
    values = {}
    for service in services.values():
        for name, value in (service.get("environment") or {}).items():
            variable = environment.BY_NAME.get(name)
            if variable and variable.is_secret and value:
                values[name] = value
    return values


def healthcheck_reading_secrets(healthcheck: dict) -> dict:
    """A health check runs outside the entrypoint: have secret-env give it the secrets first."""
    test = healthcheck.get("test") or []
    if test[:1] == ["CMD-SHELL"]:
        test = ["CMD", "secret-env", "/bin/sh", "-c", test[1]]
    elif test[:1] == ["CMD"]:
        test = ["CMD", "secret-env", *test[1:]]
    return {**healthcheck, "test": test}


def render_service(name: str, service: dict, secrets: dict, registry: str, workers: int) -> dict:
    unknown = set(service) - CARRIED - DROPPED
    if unknown:
        raise RenderError(f"service {name} uses {', '.join(sorted(unknown))}, which stackctl/swarm.py does not "
                         f"carry over to Docker Swarm yet: add it to CARRIED or DROPPED, with its conversion")
    out = {key: value for key, value in service.items() if key in CARRIED - {"tmpfs", "deploy"} and value is not None}
    out["image"] = f"{registry}/{service['image']}"

    env, used = {}, set()
    for variable, value in (service.get("environment") or {}).items():
        # By name (SECRET_KEY), or by value (the redis image's REDISCLI_AUTH is REDIS_PASSWORD).
        source = variable if variable in secrets else next((s for s, v in secrets.items() if v == value), None)
        if source:
            env[f"{variable}_FILE"] = f"{SECRETS_DIR}/{source.lower()}"
            used.add(source)
        else:
            env[variable] = value
    waits = any(dependency == "migrate" for dependency in service.get("depends_on") or {})
    if waits:
        env["WAIT_FOR_SCHEMA"] = "true"
        if "healthcheck" in out:
            start = check_sizing.seconds(out["healthcheck"].get("start_period", "0s"))
            out["healthcheck"] = {**out["healthcheck"], "start_period": f"{start + SCHEMA_WAIT_ALLOWANCE_SECONDS:.0f}s"}
    if env:
        out["environment"] = env
    if used:
        out["secrets"] = [{"source": source.lower(), "target": source.lower()} for source in sorted(used)]
        if "healthcheck" in out:
            out["healthcheck"] = healthcheck_reading_secrets(out["healthcheck"])
    if service.get("tmpfs"):
        out["volumes"] = [*out.get("volumes", []), *({"type": "tmpfs", "target": path} for path in service["tmpfs"])]

    deploy = {key: value for key, value in (service.get("deploy") or {}).items() if key == "resources"}
    limits = (deploy.get("resources") or {}).get("limits")
    if limits and "cpus" in limits:
        limits["cpus"] = str(limits["cpus"])
    deploy["placement"] = {"constraints": [constraint(WORKER_LABEL if name in WORKER_SERVICES else CORE_LABEL)]}
    # A service's name resolves to its tasks' own addresses, not to a virtual IP: nothing goes
    # through Swarm's routing mesh (no port is published), and on kernels without IPVS (this
    # project's test machine) a virtual IP answers nothing.
    deploy["endpoint_mode"] = "dnsrr"
    if service.get("restart") == "no":  # a one-shot: run to completion once per deployment of its image
        deploy.update(mode="replicated-job", restart_policy={"condition": "on-failure", "delay": "5s"})
    else:
        deploy["replicas"] = workers if name == "worker" else 1
        deploy["restart_policy"] = {"condition": "any", "delay": "5s"}
    if name in WORKER_SERVICES:
        deploy["update_config"] = WORKER_UPDATE
    if name == "web":
        deploy["update_config"] = WEB_UPDATE
    if name == "beat":
        deploy["update_config"] = BEAT_UPDATE
    out["deploy"] = deploy
    return out


def render(model: dict, stack: str, registry: str, workers: int) -> tuple:
    """(stack file as a dict, {secret file name: value}, [(local image, registry image)])."""
    services = {name: service for name, service in model["services"].items() if name not in NOT_IN_STACK}
    secrets = secret_values(services)
    rendered = {name: render_service(name, service, secrets, registry, workers) for name, service in services.items()}
    used = {entry["source"] for service in rendered.values() for entry in service.get("secrets", [])}
    # `docker compose config` writes `$` as `$$` (its output is a compose file itself, and so is
    # the stack file: `docker stack deploy` reads `$$` back as `$`); a secret's file holds it as is.
    files = {source.lower(): value.replace("$$", "$") for source, value in secrets.items() if source.lower() in used}
    stack_file = {
        "services": rendered,
        # Overlay: the services find each other by name on every node. Attachable, so that a
        # reverse proxy container on the core node can join it and reach web:8000.
        "networks": {name: {"driver": "overlay", "attachable": True} for name in model.get("networks", {})},
        # Named after the stack (its volumes stay on the core node, where their services are pinned).
        "volumes": {name: {} for name in model.get("volumes", {})},
        # Secrets are immutable in Swarm: a changed value is a new secret (the name carries its hash).
        "secrets": {name: {"name": f"{stack}_{name}_{hashlib.sha256(value.encode()).hexdigest()[:12]}",
                           "file": f"secrets/{name}"} for name, value in files.items()},
    }
    text = json.dumps(stack_file)
    leaked = [name for name, value in secrets.items() if value in text]
    if leaked:
        raise RenderError(f"the rendered stack would carry {', '.join(leaked)} in plain text")
    images = sorted({(service["image"], f"{registry}/{service['image']}") for service in services.values()})
    return stack_file, files, images


def docker(*arguments: str) -> str:
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"docker {' '.join(arguments)} failed: {result.stderr.strip()}")
    return result.stdout


def labelled_nodes() -> tuple:
    """(hostnames of the ready, active nodes labelled core, ... labelled as worker hosts)."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").split()
    if state != ["active", "true"]:
        raise RenderError("this machine is not a manager of an active swarm: run `docker swarm init` (or deploy from a manager)")
    ids = docker("node", "ls", "--quiet").split()
    nodes = json.loads(docker("node", "inspect", *ids))
    ready = [n for n in nodes if n["Status"]["State"] == "ready" and n["Spec"]["Availability"] == "active"]

    def having(label):
        return [n["Description"]["Hostname"] for n in ready if n["Spec"].get("Labels", {}).get(label[0]) == label[1]]

    return having(CORE_LABEL), having(WORKER_LABEL)


def check_nodes(core: list, workers: list) -> None:
    how = "docker node update --label-add {}={} NODE"
    if len(core) != 1:
        found = f"found {len(core)}: {', '.join(core)}" if core else "found none"
        raise RenderError(f"exactly one ready node must be labelled {'='.join(CORE_LABEL)} (redis, mariadb, web and "
                         f"beat keep their data on it), {found}: {how.format(*CORE_LABEL)}")
    if not workers:
        raise RenderError(f"no ready node is labelled as a worker host ({'='.join(WORKER_LABEL)}): "
                         f"{how.format(*WORKER_LABEL)}")


def compose_model(env_file: str) -> dict:
    result = subprocess.run(["docker", "compose", "--env-file", env_file, "config", "--format", "json"],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"docker compose could not read the configuration:\n{result.stderr}")
    return json.loads(result.stdout)


def write(out: Path, stack: str, stack_file: dict, files: dict, images: list) -> None:
    (out / "secrets").mkdir(mode=0o700, parents=True)
    for name, value in files.items():
        path = out / "secrets" / name
        path.touch(mode=0o600)
        path.write_text(value)
    (out / "stack.yaml").write_text(json.dumps(stack_file, indent=2))  # JSON is YAML
    (out / "images").write_text("".join(f"{local} {remote}\n" for local, remote in images))
    (out / "stack").write_text(stack + "\n")


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", default=".env")
    parser.add_argument("--registry", required=True, help="HOST:PORT of the registry every node pulls from")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--workers", type=int, help="replicas of the worker service (default: one per worker host)")
    parser.add_argument("--stack", help="the stack's name (default: COMPOSE_PROJECT_NAME, or myauth)")
    options = parser.parse_args(argv)
    try:
        values = envfile.read_env_file(options.env_file)
        stack = options.stack or values.get("COMPOSE_PROJECT_NAME") or "myauth"
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", options.registry):
            raise RenderError(f"--registry {options.registry!r} is not HOST:PORT")
        core, worker_hosts = labelled_nodes()
        check_nodes(core, worker_hosts)
        workers = options.workers or len(worker_hosts)
        if workers < 1:
            raise RenderError("--workers must be at least 1")
        sizing = subprocess.run([ROOT / "scripts" / "check-sizing", "--worker-replicas", str(workers),
                                 "--worker-hosts", str(len(worker_hosts)), "--env-file", options.env_file])
        if sizing.returncode != 0:
            raise RenderError(f"the sizes do not allow {workers} worker replicas on {len(worker_hosts)} worker host(s)")
        stack_file, files, images = render(compose_model(options.env_file), stack, options.registry, workers)
        write(options.out, stack, stack_file, files, images)
    except (RenderError, environment.ConfigurationError) as error:
        print(f"swarm-deploy: refused, nothing was changed: {error}", file=sys.stderr)
        return 1
    print(f"swarm-deploy: stack {stack}: core services on {core[0]}, {workers} worker replica(s) on "
          f"{len(worker_hosts)} worker host(s) ({', '.join(worker_hosts)}); images from {options.registry}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
