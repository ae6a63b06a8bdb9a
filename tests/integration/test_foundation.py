"""The foundation's promises, checked on the real stack built from this checkout."""

import re

import requests

from tests.conftest import inspect, run_in, wait_for_log

LONG_RUNNING = {"redis", "mariadb", "web", "worker", "worker-cpu", "beat"}  # the test stack enables worker-cpu


def test_every_long_running_service_is_healthy_and_migrate_succeeded(stack):
    states = {c.Service: c for c in stack.get_containers(include_all=True)}
    assert LONG_RUNNING <= set(states), f"services running: {sorted(states)}"
    for service in LONG_RUNNING:
        assert states[service].Health == "healthy", f"{service}: {states[service].Status}"
    assert states["migrate"].State == "exited" and states["migrate"].ExitCode == 0


def test_login_page_renders_with_its_css_served_by_the_stack(site):
    page = requests.get(f"{site}/account/login/", timeout=30)
    assert page.status_code == 200
    stylesheets = re.findall(r'href="(/static/[^"]+\.css)"', page.text)
    assert stylesheets, "the login page links no stylesheet from /static/"
    for path in stylesheets:
        css = requests.get(f"{site}{path}", timeout=30)
        assert css.status_code == 200, path
        assert css.headers["Content-Type"].startswith("text/css"), path
        assert len(css.content) > 1000, f"{path} is only {len(css.content)} bytes"


def test_check_deploy_reports_no_errors(stack):
    # Django exits non-zero when a check reports an ERROR; TLS warnings are explained in README.
    output = run_in(stack, "web", "python3", "manage.py", "check", "--deploy", "--fail-level", "ERROR")
    assert "ERRORS:" not in output


def test_every_model_change_has_its_migration(stack):
    output = run_in(stack, "web", "python3", "manage.py", "makemigrations", "--check", "--dry-run")
    assert "No changes detected" in output


def test_supervisord_runs_every_worker_program_and_memmon(stack):
    status = run_in(stack, "worker", "supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "status")
    programs = dict(line.split()[:2] for line in status.splitlines())
    assert programs == {
        "memmon": "RUNNING",
        "worker:worker_00": "RUNNING",
        "worker_services:worker_services_00": "RUNNING",
    }, status


def test_seed_load_command_run_model_update_completes_in_the_worker(stack):
    task_id = run_in(stack, "worker", "celery", "-A", "myauth", "call",
                     "allianceauth.eveonline.tasks.run_model_update").strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), task_id
    wait_for_log(stack, "worker", f"run_model_update[{task_id}] succeeded")


def test_task_sent_from_the_web_container_runs_on_the_worker(stack):
    send = (
        "from esi.tasks import cleanup_callbackredirect;"
        "print(cleanup_callbackredirect.apply_async(priority=5).id)"
    )
    task_id = run_in(stack, "web", "python3", "manage.py", "shell", "-c", send).strip().splitlines()[-1]
    wait_for_log(stack, "worker", f"cleanup_callbackredirect[{task_id}] succeeded")


def test_only_the_web_port_is_published_and_only_on_loopback(stack, env):
    published = {}
    for container in stack.get_containers():
        ports = inspect(container.ID)["NetworkSettings"]["Ports"]
        published[container.Service] = [b for bindings in ports.values() if bindings for b in bindings]
    assert {s for s, bindings in published.items() if bindings} == {"web"}
    assert {(b["HostIp"], b["HostPort"]) for b in published["web"]} == {("127.0.0.1", env["WEB_PORT"])}


def test_every_process_runs_as_its_non_root_user(stack):
    expected = {"web": "myauth", "worker": "myauth", "worker-cpu": "myauth", "beat": "myauth",
                "redis": "redis", "mariadb": "mysql"}
    for service, user in expected.items():
        # The owner of /proc/<pid> is the process's user; this works in images without ps.
        owners = set(run_in(stack, service, "sh", "-c", "stat -c %U /proc/[0-9]*").split())
        assert owners == {user}, f"{service} has processes of {owners}"
