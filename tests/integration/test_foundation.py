"""The foundation's promises, checked on the real stack built from this checkout."""

import re
import subprocess

import requests

from stackctl import check_sizing
from stackctl.stack import ROOT
from tests.integration.conftest import wait_for_log

LONG_RUNNING = set(check_sizing.LONG_RUNNING)  # the test stack enables worker-cpu and prometheus


def test_every_long_running_service_is_healthy_and_migrate_succeeded(stack):
    states = {row["Service"]: row for row in stack.ps("--all")}
    assert LONG_RUNNING <= set(states), f"services running: {sorted(states)}"
    for service in LONG_RUNNING:
        assert states[service]["Health"] == "healthy", f"{service}: {states[service]['Status']}"
    assert states["migrate"]["State"] == "exited" and states["migrate"]["ExitCode"] == 0


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


def test_the_url_scripts_up_prints_answers_with_the_login_page(stack, env_file, env):
    printed = subprocess.run([ROOT / "scripts" / "internal" / "stackctl", "envfile", "url", env_file],
                             capture_output=True, text=True, check=True).stdout.strip()  # what scripts/up prints
    page = requests.get(printed, timeout=30)
    assert page.status_code == 200 and page.url == f"{printed}/account/login/?next=/"
    assert 'href="/sso/login?next=/"' in page.text, "not Alliance Auth's login page"
    # What scripts/up used to print: the published address, not a host Django answers for.
    assert requests.get(f"http://{env['WEB_BIND_ADDRESS']}:{env['WEB_PORT']}/", timeout=30).status_code == 400


def test_check_deploy_reports_no_errors(stack):
    # Django exits non-zero when a check reports an ERROR; TLS warnings are explained in README.
    output = stack.exec("web", "python3", "manage.py", "check", "--deploy", "--fail-level", "ERROR")
    assert "ERRORS:" not in output


def test_every_model_change_has_its_migration(stack):
    output = stack.exec("web", "python3", "manage.py", "makemigrations", "--check", "--dry-run")
    assert "No changes detected" in output


def test_supervisord_runs_every_worker_program_and_memmon(stack):
    status = stack.exec("worker", "supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "status")
    programs = dict(line.split()[:2] for line in status.splitlines())
    assert programs == {
        "memmon": "RUNNING",
        "metrics": "RUNNING",
        "worker:worker_00": "RUNNING",
        "worker_services:worker_services_00": "RUNNING",
    }, status


def test_seed_load_command_run_model_update_completes_in_the_worker(stack):
    # With any EVE model in the database it would ask EVE's ESI about it (unreachable here: the
    # task it queues hangs until its time limit), so earlier tests must leave none behind.
    left = stack.diagnostics("eve-models")
    assert left == 0, f"{left} EVE models left by an earlier test; run_model_update would call ESI for them"
    task_id = stack.exec("worker", "celery", "-A", "myauth", "call",
                     "allianceauth.eveonline.tasks.run_model_update").strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), task_id
    wait_for_log(stack, "worker", f"run_model_update[{task_id}] succeeded")


def test_task_sent_from_the_web_container_runs_on_the_worker(stack):
    task_id = stack.diagnostics("send-cleanup-task")
    wait_for_log(stack, "worker", f"cleanup_callbackredirect[{task_id}] succeeded")


def test_every_process_runs_as_its_non_root_user(stack):
    expected = {"web": "myauth", "worker": "myauth", "worker-cpu": "myauth", "beat": "myauth",
                "metrics": "myauth", "prometheus": "prometheus", "redis": "redis", "mariadb": "mysql"}
    for service, user in expected.items():
        # The owner of /proc/<pid> is the process's user; this works in images without ps. A process
        # can end between the glob and its stat (Docker's health check runs in the container too):
        # such a process is skipped, never counted.
        owners = set(stack.exec(service, "sh", "-c",
                            'for p in /proc/[0-9]*; do stat -c %U "$p" 2>/dev/null; done; true').split())
        assert owners == {user}, f"{service} has processes of {owners}"
