"""The load test's short version, on the running test stack: each compared worker completes
every task once, with no broker trouble in its log, and the result file holds every run. (The
full run's figures are in docs/.)"""

import json
import subprocess

from stackctl.stack import ROOT

TASKS = 100


def test_the_quick_load_test_completes_every_task_on_each_compared_worker(stack, env_file, tmp_path):
    subprocess.run([ROOT / "scripts" / "loadtest", "--env-file", str(env_file), "--quick",
                    "--tasks", str(TASKS), "--out", str(tmp_path)], check=True)

    result = json.loads((tmp_path / "result.json").read_text())
    runs = {run["pool"]: run for run in result["runs"]}
    assert set(runs) == {"threads", "prefork", "gevent"}
    assert runs["threads"]["concurrency"] == 5  # Alliance Auth's default worker
    for run in runs.values():
        assert (run["sent"], run["completed"], run["errors"]) == (TASKS, TASKS, 0), run
        assert run["extra_runs"]["count"] == 0 and run["broker_trouble"] == {}, run
        assert run["tasks_per_second"] > 0 and run["rss_peak_mib"] > 0
        assert set(run["by_priority"]) <= {"2", "5", "7"}
    assert {"machine", "overlay", "worker_limits", "latency_ms"} <= set(result)
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing is left behind on the stack: no stub, no variant container, no queued load.
    services = subprocess.run(["docker", "compose", "--env-file", str(env_file), "ps", "--all", "--services"],
                              cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "esi-stub" not in services
