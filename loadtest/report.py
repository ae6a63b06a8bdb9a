"""The load test's table (stdout, README) and chart (PNG)."""

from pathlib import Path

COLUMNS = ("variant", "tasks/s", "of bound", "run p50/p99 ms", "RSS idle/peak MiB", "CPU", "MariaDB / Redis ms a task",
           "host busy", "done", "errors", "extra runs")


def cells(run: dict) -> tuple:
    bound = f"{run['of_bound']:.0%} of {run['bound_per_second']:.0f}" if run["of_bound"] is not None else "-"
    run_ms = f"{run['run_ms']['p50']:.0f} / {run['run_ms']['p99']:.0f}" if run["run_ms"]["p50"] is not None else "-"
    cpu = f"{run['cpu_cores']:.2f}" if run["cpu_cores"] is not None else "-"
    host = f"{run['host_cpu_busy']:.0%}" if run.get("host_cpu_busy") is not None else "-"
    return (f"{run['variant']} ({run['kind']})", f"{run['tasks_per_second']:.1f}", bound, run_ms,
            f"{run['rss_idle_mib']:.0f} / {run['rss_peak_mib']:.0f}", cpu, backing(run), host,
            f"{run['completed']}/{run['sent']}", errors(run), extra(run))


def backing(run: dict) -> str:
    """MariaDB's and Redis's CPU per task: on one host, the worker's CPU too."""
    used, rate = run.get("backing_cpu_cores") or {}, run["tasks_per_second"]
    if not used or not rate:
        return "-"
    return " / ".join(f"{used[service] / rate * 1000:.1f}" for service in ("mariadb", "redis"))


def extra(run: dict) -> str:
    """Runs beyond a task's first (how many were redeliveries), and any broker trouble in the log."""
    runs = run["extra_runs"]
    text = f"{runs['count']} ({runs['redelivered']} redelivered)" if runs["count"] else "0"
    trouble = ", ".join(f"{times} x {line}" for line, times in run.get("broker_trouble", {}).items())
    return f"{text}; log: {trouble}" if trouble else text


def errors(run: dict) -> str:
    """The count, and what most of them were."""
    if not run["errors"]:
        return "0"
    kind, times = next(iter(run["error_kinds"].items()))
    return f"{run['errors']} ({times} x {kind})"


def line(run: dict) -> str:
    return "  ".join(f"{name}: {value}" for name, value in zip(COLUMNS, cells(run)))


def table(result: dict) -> str:
    """Markdown: the runs, then the scenarios and the machine."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    rows += ["| " + " | ".join(cells(run)) + " |" for run in result["runs"]]
    machine = result["machine"]
    rows += ["", f"Overlay {result['overlay']} (worker container: {result['worker_limits']['cpus']} CPU, "
                 f"{result['worker_limits']['memory'] // 2**20} MiB); ESI stub latency {result['latency_ms']:.0f} "
                 f"± {result['jitter_ms']:.0f} ms; {machine['cpus']} x {machine['cpu']}, {machine['memory_gib']} GiB, "
                 f"Docker {machine['docker']}, {machine['date']}."]
    if "priority" in result:
        priority = result["priority"]
        rows.append(f"Priority: with {priority['priority_7_queued']} priority-7 tasks queued, priority-2 queue wait "
                    f"p50 {priority['priority_2_wait_ms']['p50']} ms, p99 {priority['priority_2_wait_ms']['p99']} ms "
                    f"({priority['priority_2_completed']}/{priority['priority_2_sent']} ran).")
    if "memmon" in result:
        memmon = result["memmon"]
        rows.append(f"Worker container at idle: {memmon['worker_container_idle']}, "
                    f"{memmon['worker_container_idle_cpu']:.2%} of a core; around a memmon restart the "
                    f"worker did not consume for {memmon['not_consuming_seconds']} s.")
        rows.append(monitoring_cost(memmon["monitoring"], result["runs"]))
    return "\n".join(rows)


def monitoring_cost(cost: dict, runs: list) -> str:
    """The metrics' cost in the worker, beside what a no-op task costs the gevent worker."""
    noop = next((r for r in runs if r["kind"] == "noop" and r["pool"] == "gevent" and r["cpu_cores"]), None)
    text = f"Metrics in the worker: counting a task's outcome {cost['count_microseconds']} µs"
    if noop:
        per_task_us = noop["cpu_cores"] / noop["tasks_per_second"] * 1e6
        text += f" ({cost['count_microseconds'] / per_task_us:.2%} of the {per_task_us:.0f} µs a no-op task costs {noop['variant']})"
    # ps counts CPU in whole seconds: a listener below one second is bounded, not measured.
    cpu, elapsed = cost["listener_cpu_seconds"], max(cost["listener_elapsed_seconds"], 1)
    used = f"{cpu} s" if cpu else "under 1 s"
    share = f"{cpu / elapsed:.2%}" if cpu else f"under {1 / elapsed:.2%}"
    return text + f"; the supervisord listener used {used} of CPU in {elapsed} s ({share} of a core)."


def chart(result: dict, path: Path) -> None:
    """Throughput against gevent concurrency (with its bound), beside the compared variants."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    runs = [r for r in result["runs"] if r["kind"] != "noop"]
    gevent = sorted((r for r in runs if r["pool"] == "gevent"), key=lambda r: r["concurrency"])
    figure, (sweep, memory) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    if gevent:
        x = [r["concurrency"] for r in gevent]
        sweep.plot(x, [r["tasks_per_second"] for r in gevent], "o-", label="gevent: measured")
        sweep.plot(x, [r["bound_per_second"] or 0 for r in gevent], "--", color="grey",
                   label="bound: min(concurrency / latency, CPU ceiling)")
        sweep.set_xscale("log")
        sweep.set_xticks(x, [str(c) for c in x], rotation=45)  # neighbours such as 50 and 60 stay legible
        sweep.minorticks_off()
    for run, marker in zip((r for r in runs if r["pool"] != "gevent"), ("s", "^")):
        sweep.plot([run["concurrency"]], [run["tasks_per_second"]], marker, markersize=9, label=run["variant"])
    sweep.set_xlabel("concurrency")
    sweep.set_ylabel("tasks / s")
    sweep.set_title(f"ESI-like tasks ({result['latency_ms']:.0f} ms), overlay {result['overlay']}")
    sweep.legend(fontsize=8)
    sweep.grid(alpha=0.3)

    names = [r["variant"] for r in runs]
    memory.barh(names, [r["rss_peak_mib"] for r in runs], color="tab:orange", label="peak")
    memory.barh(names, [r["rss_idle_mib"] for r in runs], color="tab:blue", label="idle")
    memory.set_xlabel("worker RSS (MiB)")
    memory.legend(fontsize=8)
    memory.grid(alpha=0.3, axis="x")
    figure.suptitle(f"{result['machine']['cpus']} x {result['machine']['cpu']}, {result['machine']['date']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
