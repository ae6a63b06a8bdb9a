"""The stack on a real Docker Swarm (README, "Scale out on Docker Swarm").

This machine becomes a one-node swarm for this module only: its node is labelled both the core
node and a worker host, the stack is rendered by scripts/swarm-deploy from compose.yaml, the
small overlay and the test settings (tests/stack.yaml, tests/swarm.yaml), and its images go
through a registry built from Debian's docker-registry package. The module refuses to start on a
machine that is already in a swarm, and always removes its stack and leaves the swarm at the end.
"""

import json
import os
import signal
import subprocess
import time
from urllib.parse import urlparse

import pytest

import environment

from stackctl import envfile
from stackctl.stack import ROOT, Stack, StackError
from tests.conftest import IMAGE_TAG, MEASURED, PROJECT, docker
from tests.integration.conftest import RERUN_WITHIN_SECONDS
from tests.integration.diagnostics import Diagnostics, labels
from tests.integration.test_delivery import check_soak

pytestmark = pytest.mark.leaves_swarm  # run last (tests/conftest.py)
STACK = f"{PROJECT}-stack"  # its services, volumes, secrets and network are named after it
WORKERS = 3
POLLER = f"{STACK}-web-poller"
ESI = "http://esi-stub:8080/?ms=1000&jitter=300"
SLOW_ESI = "http://esi-stub:8080/?ms=3000&jitter=300"



class SwarmStack(Stack):
    """stackctl's driver on the Swarm stack: its commands run, through `docker exec`, in a running
    task of each service."""

    def containers(self, service: str) -> list:
        return docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}",
                      "--filter", "status=running").split()

    def exec(self, service: str, *command: str, input: str = None, check: bool = True, **variables: str) -> str:
        flags = [flag for name, value in variables.items() for flag in ("-e", f"{name}={value}")]
        # `docker exec` skips the entrypoint: secret-env reads the service's secrets first.
        result = subprocess.run(["docker", "exec", "-i", *flags, self.containers(service)[0], "secret-env", *command],
                                input=input or "", capture_output=True, text=True)
        if check and result.returncode != 0:
            raise StackError(f"{' '.join(command)[:200]} in {service} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def logs(self, service: str) -> str:
        """The service's log, stdout and stderr (gunicorn's own lines) together."""
        return subprocess.run(["docker", "service", "logs", "--raw", f"{STACK}_{service}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def deploy(env_file, registry: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ROOT / "scripts" / "swarm-deploy", "--registry", registry, "--workers", str(WORKERS)],
                            env={**os.environ, "ENV_FILE": str(env_file)}, capture_output=True, text=True)
    assert not check or result.returncode == 0, f"swarm-deploy failed:\n{result.stdout}\n{result.stderr}"
    return result


def replicas_running(service: str, count: int) -> bool:
    """`count` tasks of the service running, each healthy (Swarm starts a task only once healthy)."""
    tasks = docker("service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
                   f"{STACK}_{service}").split("\n")
    return sum(state.startswith("Running") for state in tasks) == count


# Polls the login page every 0.2 s from inside the stack's network (Swarm publishes no port on
# loopback, so nothing is published); prints "time status" per poll, 0 for no answer.
POLL = """
import sys, time, urllib.request
request = urllib.request.Request("http://web:8000/account/login/", headers={"Host": sys.argv[1]})
while True:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except Exception:
        status = 0
    print(f"{time.time():.1f} {status}", flush=True)
    time.sleep(0.2)
"""


def costs(diag) -> dict:
    """Counters of Redis and MariaDB: commands and queries served, CPU seconds used."""
    redis = dict(line.split(":", 1) for line in diag.redis("info").splitlines() if ":" in line)
    mariadb = diag.run("mariadb", "sh", "-c", 'MYSQL_PWD="$MARIADB_PASSWORD" mariadb --protocol=tcp --host=127.0.0.1 '
                       '--user="$MARIADB_USER" -N -e "SHOW GLOBAL STATUS LIKE \'Questions\'"; '
                       'getconf CLK_TCK; cut -d" " -f14,15 /proc/1/stat').split()
    return {"redis commands": int(redis["total_commands_processed"]),
            "redis cpu": float(redis["used_cpu_user"]) + float(redis["used_cpu_sys"]),
            "mariadb queries": int(mariadb[1]),
            "mariadb cpu": (int(mariadb[3]) + int(mariadb[4])) / int(mariadb[2])}


@pytest.fixture(scope="module")
def swarm_env(tmp_path_factory):
    path = tmp_path_factory.mktemp("swarm") / "swarm.env"
    envfile.write_env_file(
        str(path), COMPOSE_PROJECT_NAME=STACK, IMAGE_TAG=IMAGE_TAG, COMPOSE_PROFILES="loadtest",
        COMPOSE_FILE="compose.yaml:config/overlays/small.yaml:tests/stack.yaml:tests/swarm.yaml",
        SCHEDULE_OUTBOUND_TASKS="false", DIAGNOSTICS_ENABLED="true")
    return path


@pytest.fixture(scope="module")
def registry(built_images, swarm_env):
    """The registry image, run beside the swarm on a free loopback port; 'host:port'."""
    compose = ["docker", "compose", "--env-file", str(swarm_env), "--project-name", f"{STACK}-registry",
               "--profile", "registry"]
    subprocess.run([*compose, "up", "--detach", "--wait", "--build", "registry"], cwd=ROOT, check=True, capture_output=True)
    try:
        yield subprocess.run([*compose, "port", "registry", "5000"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run([*compose, "down", "--volumes"], cwd=ROOT, capture_output=True)


@pytest.fixture(scope="module")
def swarm(registry, swarm_env):
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if state != "inactive":
        pytest.fail(f"this machine is already in a swarm (state {state!r}): test_swarm makes it a swarm of its own "
                    f"and leaves it afterwards, so it does not run here; `docker swarm leave` first if that swarm is yours")
    docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
    try:
        # Unlabelled, the node is refused before anything changes.
        refused = deploy(swarm_env, registry, check=False)
        assert refused.returncode == 1 and "exactly one ready node must be labelled myauth.role=core" in refused.stderr
        assert docker("service", "ls", "--quiet") == "" and docker("secret", "ls", "--quiet") == ""
        node = docker("info", "--format", "{{.Swarm.NodeID}}").strip()
        docker("node", "update", "--label-add", "myauth.role=core", "--label-add", "myauth.worker=true", node)

        began = time.monotonic()
        deploy(swarm_env, registry)
        diag = Diagnostics(SwarmStack(swarm_env))
        try:
            diag.wait_for(lambda: all(replicas_running(s, n) for s, n in
                                      (("web", 1), ("beat", 1), ("worker", WORKERS), ("redis", 1), ("mariadb", 1))),
                          300, "every service of the stack to run, healthy")
        except AssertionError as error:
            tasks = docker("stack", "ps", "--no-trunc", STACK, check=False)
            logs = {s: diag.logs(s)[-3000:] for s in ("migrate", "web", "worker")}
            pytest.fail(f"{error}\n{tasks}\n{logs}")
        docker("run", "--detach", "--name", POLLER, "--network", f"{STACK}_default", "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--entrypoint", "python3", f"myauth-app:{IMAGE_TAG}", "-c", POLL,
               urlparse(diag.stack.env["SITE_URL"]).hostname)
        MEASURED.append(f"swarm: scripts/swarm-deploy (build, push, deploy) until every service ran healthy: "
               f"{time.monotonic() - began:.0f} s, {WORKERS} worker replicas")
        yield diag
    finally:
        # The test is over: no graceful stop (README: an operator scales the workers to 0 first).
        docker("rm", "--force", POLLER, check=False)
        docker("stack", "rm", STACK, check=False)
        mine = ("--filter", f"label=com.docker.stack.namespace={STACK}")
        for _ in range(10):  # a leave that times out can leave the node half out of the swarm: again
            docker("swarm", "leave", "--force", check=False)
            if docker("info", "--format", "{{.Swarm.LocalNodeState}}", check=False).strip() == "inactive":
                break
            time.sleep(3)
        for kind, listing in (("container", ("ps", "--all", "--quiet")), ("volume", ("volume", "ls", "--quiet"))):
            leftovers = docker(*listing, *mine, check=False).split()  # finished tasks' containers, then volumes
            if leftovers:
                docker(kind, "rm", "--force", *leftovers, check=False)


def test_the_stack_runs_as_rendered_placed_by_node_labels_with_its_secrets_as_files(swarm, swarm_env):
    services = {s["Spec"]["Name"][len(STACK) + 1:]: s["Spec"] for s in
                json.loads(docker("service", "inspect", *docker("service", "ls", "--quiet").split()))}
    secrets = [value for name, value in envfile.read_env_file(str(swarm_env)).items()
               if name in environment.BY_NAME and environment.BY_NAME[name].is_secret and value]
    assert len(secrets) == 4 and not [value for value in secrets if value in json.dumps(services)]
    assert services["worker"]["Mode"]["Replicated"]["Replicas"] == WORKERS
    assert services["beat"]["Mode"]["Replicated"]["Replicas"] == 1
    assert "ReplicatedJob" in services["migrate"]["Mode"]
    for name, spec in services.items():
        expected = "node.labels.myauth.worker == true" if name == "worker" else "node.labels.myauth.role == core"
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == [expected], name
        container = spec["TaskTemplate"]["ContainerSpec"]
        assert container.get("ReadOnly") and container.get("CapabilityDrop") == ["ALL"], name
    # The processes run with the secrets, read from /run/secrets by secret-env.
    assert swarm.redis("ping").strip() == "PONG"
    web = inspect(swarm.stack.containers("web")[0])
    assert web["Config"]["User"] == "myauth" and web["State"]["Health"]["Status"] == "healthy"


def test_the_app_containers_waited_for_the_migrate_job_and_said_so(swarm):
    log = swarm.logs("web")
    waiting = log.find("schema: waiting before starting")
    ready = log.find("schema: every migration is applied")
    assert 0 <= waiting < ready, log[:3000]
    assert log.find("Listening at", ready) > ready  # gunicorn starts only then
    jobs = docker("service", "ps", "--format", "{{.CurrentState}}", f"{STACK}_migrate").splitlines()
    assert any(state.startswith("Complete") for state in jobs), jobs


def test_scaling_the_workers_from_one_to_three_during_a_backlog_runs_every_task_once(swarm, report):
    docker("service", "scale", "--detach=false", f"{STACK}_worker=1")
    swarm.reset()
    batch = [("diagnostics.esi_update", [f"scale-{i:04d}", ESI], {}) for i in range(450)]
    before = costs(swarm)
    swarm.enqueue(batch)
    began = time.time()
    docker("service", "scale", "--detach", f"{STACK}_worker=3")
    events = swarm.wait_until_ended(labels(batch), 240)
    after = costs(swarm)
    runs = swarm.runs()
    assert all(runs[label] == 1 for label in labels(batch)), {label: n for label, n in runs.items() if n != 1}
    containers = {e["container"] for e in events if e["event"] == "start" and e["label"].startswith("scale-")}
    assert len(containers) == 3, containers
    first = {c: min(e["time"] for e in events if e["container"] == c) - began for c in containers}
    report(f"swarm: workers scaled 1 -> 3 during a backlog of {len(batch)} ESI-like tasks: every task ran once, "
           f"in {max(e['time'] for e in events) - began:.0f} s; the new replicas took their first task "
           f"{sorted(first.values())[1]:.0f} and {sorted(first.values())[2]:.0f} s after the scale")
    per_task = {name: (after[name] - before[name]) / len(batch) for name in before}
    report("swarm: per ESI-like task (one HTTP call, one row written; beat, health checks and the web "
           "poller included): " + ", ".join(f"{name} {value:.4g}" for name, value in per_task.items()))


def test_a_worker_replica_killed_mid_load_has_its_tasks_run_again_in_another_replica(swarm, report):
    swarm.wait_for(lambda: replicas_running("worker", 3), 120, "three worker replicas")
    swarm.reset()
    batch = [("diagnostics.esi_update", [f"kill-{i:04d}", ESI], {}) for i in range(600)]
    swarm.enqueue(batch)
    swarm.wait_for(lambda: len(labels(batch) & swarm.ended_labels()) >= len(batch) // 4, 120, "a quarter to have run")
    # A replica holding tasks (lease ids are host.pid.random; the host is the container's hostname).
    by_hostname = {inspect(c)["Config"]["Hostname"]: c for c in swarm.stack.containers("worker")}
    holding = {lease.split(".")[0] for lease, tags in swarm.held().items() if tags}
    assert holding & set(by_hostname), (by_hostname, swarm.held())
    hostname = sorted(holding & set(by_hostname))[0]
    victim = by_hostname[hostname]
    leases = {lease for lease in swarm.leases() if lease.startswith(f"{hostname}.")}
    # SIGKILL of PID 1 from the host, as a host going down ends it.
    os.kill(inspect(victim)["State"]["Pid"], signal.SIGKILL)
    killed_at = time.time()
    held = swarm.labels_held(leases)
    events = swarm.wait_until_ended(labels(batch), 240)

    reran, problems = check_soak([e for e in events if e["label"].startswith("kill-")], [(killed_at, held)])
    assert held and not problems, (problems[:20], len(held), hostname, leases)
    slowest = max(max(delays) for delays in reran.values())
    assert slowest <= RERUN_WITHIN_SECONDS, reran
    # Its last run, the one that ended, was in another replica (one it was just starting when
    # the kill landed may have recorded its start there first).
    last_start = {e["label"]: e["container"] for e in events if e["label"] in held and e["event"] == "start"}
    assert hostname not in set(last_start.values()), last_start
    swarm.wait_for(lambda: replicas_running("worker", 3), 120, "Swarm to replace the killed replica")
    report(f"swarm: a worker replica's PID 1 SIGKILLed under {len(batch)} ESI-like tasks: the {len(held)} it held "
           f"ran again in another replica within {slowest:.0f} s; nothing lost, nothing else ran twice")


def test_a_rolling_update_of_the_workers_during_a_backlog_runs_every_task_exactly_once(swarm, report, request):
    if not request.config.getoption("--full-swarm"):
        pytest.skip("the rolling update takes 3-4 minutes here: scripts/test --full-swarm runs it")
    swarm.wait_for(lambda: replicas_running("worker", 3), 120, "three worker replicas")
    docker("service", "scale", "--detach=false", f"{STACK}_worker=2")
    swarm.reset()
    old = set(swarm.stack.containers("worker"))
    # ESI calls of 3 s: the backlog (100 s at 2 replicas x 10 greenlets) outlasts both replacements.
    batch = [("diagnostics.esi_update", [f"rolling-{i:04d}", SLOW_ESI], {}) for i in range(700)]
    swarm.enqueue(batch)
    began = time.monotonic()
    # Each replica in turn: its successor starts and is healthy, then it gets SIGTERM and finishes its tasks.
    # (Not --detach=false: the update is "completed" only after its monitoring window, 90 s.)
    docker("service", "update", "--force", "--detach", f"{STACK}_worker")
    swarm.wait_for(lambda: not set(swarm.stack.containers("worker")) & old and replicas_running("worker", 2), 240,
                   "both worker replicas to be replaced")
    updated = time.monotonic() - began
    events = swarm.wait_until_ended(labels(batch), 240)
    runs = swarm.runs()
    assert all(runs[label] == 1 for label in labels(batch)), {label: n for label, n in runs.items() if n != 1}
    ran_on = {e["container"] for e in events if e["event"] == "end" and e["label"].startswith("rolling-")}
    on_old = {c for c in ran_on if any(c.startswith(o[:12]) for o in old)}
    assert on_old and ran_on - on_old, (old, ran_on)  # both the old and the new replicas ran some
    report(f"swarm: rolling update of 2 worker replicas during {len(batch)} ESI-like tasks: done in {updated:.0f} s; "
           f"every task ran exactly once ({sum(1 for e in events if e['event'] == 'end' and e['container'] in on_old)} "
           f"on the old replicas)")


def test_the_web_answered_through_the_whole_run(swarm, report, request):
    polls = [line.split() for line in docker("logs", POLLER).splitlines() if line]
    failed = [poll for poll in polls if poll[1] != "200"]
    assert len(polls) > 100 and not failed, (len(polls), failed[:10])
    report(f"swarm: the login page answered all {len(polls)} polls (every 0.2 s, from inside the stack's network) "
           f"through the whole run (scaling, a replica killed{', a rolling update' if request.config.getoption('--full-swarm') else ''})")
