"""Measure what a host-size overlay sustains, against Alliance Auth's default worker.

    scripts/loadtest [--overlay small] [--env-file FILE] [--quick] [--out build/loadtest] ...

Starts the stack with the overlay as its own compose project (myauth-loadtest: own .env,
volumes, port; torn down at the end), or uses a running one (--env-file, with the
diagnostics tasks on), adds the ESI stub, and runs, on one host with one workload:

  ceiling   no-op tasks on each pool: the CPU ceiling of a worker container
  compare   ESI-like tasks (an HTTP request to the stub after --latency-ms, then one database
            write) on Alliance Auth's default worker (threads, concurrency 5), a prefork worker
            with one process per core, and the overlay's gevent worker
  sweep     the same on gevent workers of each --sweep concurrency: where the knee is (with
            MariaDB's max_connections raised to match)
  priority  a priority-2 task's queue wait while --backlog priority-7 tasks are queued
  memmon    the stack's own worker: idle memory, how long after memmon restarts a worker over
            its limit the worker is consuming again, and what the metrics cost the worker

Prints a table and writes result.json and result.png to --out. --quick (CI): --tasks tasks on
each of the three compare variants, run to completion, nothing else.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import environment

from stackctl import envfile

from . import report
from .progress import Progress
from .stack import ROOT, Stack, Variant, cores, idle_cpu
from .workload import Load, by_priority, collect, completed, extra_runs, percentiles, throughput

WARMUP = 2.0  # seconds after the load begins that throughput does not count
BACKING_SERVICES = ("mariadb", "redis")  # their CPU per task is the worker's too, on one host
NOOP_BACKLOG_RATE = 500  # with the backlog's margin, enough for a no-op ceiling up to about 850/s
STEP_SECONDS = 25  # what a step costs besides queueing its tasks: start a worker, measure, stop it
QUEUE_SECONDS_PER_TASK = 0.0023  # queueing one task from the web container, as measured here
MEMMON_SECONDS = 60  # the memmon step besides memmon's own tick: idle CPU over 30 s, marks for 25 s more
SWEEP_CONNECTION_HEADROOM = 50  # the stack's own web, workers and beat, beside a swept variant


def parse_arguments(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--env-file", type=Path, help="measure this running stack instead of starting one")
    parser.add_argument("--quick", action="store_true", help="CI: --tasks tasks on the three compare variants only")
    parser.add_argument("--tasks", type=int, default=300, help="tasks per variant with --quick")
    parser.add_argument("--seconds", type=float, default=12, help="measuring window of each run")
    parser.add_argument("--rate", type=float, default=0, help="send at this many tasks/s instead of a backlog")
    parser.add_argument("--latency-ms", type=float, default=300)
    parser.add_argument("--jitter-ms", type=float, default=100)
    parser.add_argument("--mix", default="esi=100", help="kinds of task in percent, e.g. esi=90,cpu=5,noop=5")
    parser.add_argument("--priorities", default="7=80,5=15,2=5", help="priorities in percent")
    parser.add_argument("--sweep", default="10,25,50,75,100,200,500", help="gevent concurrencies to sweep")
    parser.add_argument("--backlog", type=int, default=10000, help="priority-7 tasks queued in the priority run")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest")
    options = parser.parse_args(argv)
    try:
        options.mix = weights(options.mix, {"esi", "cpu", "noop"})
        options.priorities = {int(p): w for p, w in weights(options.priorities, {str(p) for p in range(10)}).items()}
        options.sweep = [int(c) for c in options.sweep.split(",")]
    except ValueError as error:
        parser.error(str(error))
    if options.env_file and not options.env_file.is_file():
        parser.error(f"--env-file {options.env_file} does not exist")
    return options


def weights(text: str, allowed: set) -> dict:
    """'esi=90,cpu=10' -> {'esi': 90, 'cpu': 10}, naming what is wrong."""
    result = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in allowed or not weight.isdigit():
            raise ValueError(f"{part!r}: expected NAME=PERCENT with NAME one of {', '.join(sorted(allowed))}")
        result[name] = int(weight)
    return result


class LoadTest:
    def __init__(self, stack: Stack, options: argparse.Namespace):
        self.stack, self.options = stack, options
        self.limits = stack.worker_limits()
        worker = stack.model()["services"]["worker"]["environment"]
        self.gevent_concurrency = int(worker["WORKER_CONCURRENCY"])
        self.results = []
        self.progress = None
        self.ceilings = {}

    def load(self, count: int, kind: str = "esi", **changes) -> Load:
        mix = self.options.mix if kind == "esi" else {kind: 100}
        settings = dict(count=count, mix=mix, priorities=self.options.priorities, rate=self.options.rate,
                        latency_ms=self.options.latency_ms, jitter_ms=self.options.jitter_ms)
        return Load(**{**settings, **changes})

    def measure(self, phase: str, name: str, pool: str, concurrency: int, kind: str = "esi",
                ceiling: float = None) -> dict:
        """One variant: --tasks tasks to completion (--quick), or --seconds under a backlog queued
        before it takes any (or a stream of --rate tasks/s)."""
        self.progress.start(phase, f"{name} ({kind})")
        variant = Variant(self.stack, name, pool, concurrency)
        variant.start()
        running, sender, backing = threading.Event(), None, {}
        try:
            idle = variant.sample()
            if self.options.quick:
                tasks = self.options.tasks
            elif self.options.rate:
                tasks = int(self.options.rate * self.options.seconds)
            else:
                tasks = self.backlog_for(pool, concurrency, kind)
            load = self.load(tasks, kind)
            if self.options.quick or self.options.rate:
                sender = load.send_in_background(self.stack)
            else:
                subprocess.run(["docker", "pause", variant.container], check=True, capture_output=True)
                load.send(self.stack)
                subprocess.run(["docker", "unpause", variant.container], check=True, capture_output=True)
            began = time.time()
            running.set()
            sampler = variant.sample_while(running)
            if self.options.quick:
                deadline, reported = time.monotonic() + 300, time.monotonic()
                while (done := completed(self.stack, load.run)) < load.count and time.monotonic() < deadline:
                    if time.monotonic() - reported > 5:
                        self.progress.tasks(done, load.count)
                        reported = time.monotonic()
                    time.sleep(0.5)
                window = None  # the records' own span: first start to last end
            else:
                time.sleep(WARMUP)
                backing = self.stack.cpu_seconds(BACKING_SERVICES)
                time.sleep(max(0.0, began + self.options.seconds - time.time()))
                backing = {service: cores_used(start, end) for (service, start), end in
                           zip(backing.items(), self.stack.cpu_seconds(BACKING_SERVICES).values())}
                window = (began + WARMUP, began + self.options.seconds)
            running.clear()
            sampler.join()
        finally:
            running.clear()
            if sender:
                sender.kill()
            variant.stop()
            self.stack.purge()
        records = collect(self.stack, load.run)
        result = self.summary(name, pool, concurrency, kind, load, records, window, idle, variant, ceiling)
        result["broker_trouble"] = variant.broker_trouble()
        result["backing_cpu_cores"] = backing
        self.results.append(result)
        print(report.line(result), flush=True)
        self.progress.finish()
        return result

    def backlog_for(self, pool: str, concurrency: int, kind: str) -> int:
        """Enough tasks that the queue never runs dry within the window."""
        if kind == "esi":
            rate = min(concurrency / (self.options.latency_ms / 1000), self.ceilings.get(pool, NOOP_BACKLOG_RATE))
        else:
            rate = NOOP_BACKLOG_RATE
        return int(rate * (self.options.seconds + 5) * 1.3) + 50

    def step_seconds(self, pool: str, concurrency: int, kind: str) -> float:
        """About how long measuring a variant takes: the progress report's estimate of what is left."""
        tasks = self.options.tasks if self.options.quick else self.backlog_for(pool, concurrency, kind)
        return STEP_SECONDS + QUEUE_SECONDS_PER_TASK * tasks

    def summary(self, name, pool, concurrency, kind, load, records, window, idle, variant, ceiling) -> dict:
        if window is None:
            window = (min((r.start for r in records), default=0), max((r.end for r in records), default=0))
        samples = [s for s in variant.samples if window[0] - WARMUP <= s[0] <= window[1] + 1] or variant.samples
        cpu = (samples[-1][2] - samples[0][2]) / (samples[-1][0] - samples[0][0]) if len(samples) > 1 else None
        (busy_0, total_0), (busy_1, total_1) = samples[0][3], samples[-1][3]
        host_busy = (busy_1 - busy_0) / (total_1 - total_0) if total_1 > total_0 else None
        rate = throughput(records, *window)
        io_bound = concurrency / (self.options.latency_ms / 1000) if kind == "esi" else None
        bound = min(b for b in (io_bound, ceiling) if b) if (io_bound or ceiling) else None
        return {
            "variant": name, "pool": pool, "concurrency": concurrency, "kind": kind,
            "sent": load.count, "completed": len({r.task_id for r in records}),
            "extra_runs": extra_runs(records),
            "errors": sum(not r.ok for r in records),
            "error_kinds": dict(Counter(r.error for r in records if not r.ok).most_common()),
            "tasks_per_second": round(rate, 1),
            "bound_per_second": round(bound, 1) if bound else None,
            "of_bound": round(rate / bound, 3) if bound else None,
            "run_ms": percentiles([r.runtime for r in records]),
            "by_priority": by_priority(records),
            "rss_idle_mib": round(idle[1] / 2**20, 1),
            "rss_peak_mib": round(max(s[1] for s in variant.samples) / 2**20, 1),
            "cpu_cores": round(cpu, 2) if cpu is not None else None,
            "host_cpu_busy": round(host_busy, 2) if host_busy is not None else None,
        }

    def run(self) -> dict:
        options = self.options
        per_core = cores(self.limits)
        compare = [("alliance-auth-default", "threads", 5), (f"prefork-{per_core}", "prefork", per_core),
                   (f"gevent-{self.gevent_concurrency}", "gevent", self.gevent_concurrency)]
        sweep = [concurrency for concurrency in options.sweep if concurrency != self.gevent_concurrency]
        scenarios = {}
        if options.quick:
            self.progress = Progress([self.step_seconds(pool, concurrency, "esi") for _, pool, concurrency in compare])
            for name, pool, concurrency in compare:
                self.measure("compare", name, pool, concurrency)
            return {"compare": [r["variant"] for r in self.results]}

        self.progress = Progress(
            [self.step_seconds(pool, concurrency, "noop") for _, pool, concurrency in compare]
            + [self.step_seconds(pool, concurrency, "esi") for _, pool, concurrency in compare]
            + [self.step_seconds("gevent", concurrency, "esi") for concurrency in sweep]
            + [STEP_SECONDS + QUEUE_SECONDS_PER_TASK * options.backlog, MEMMON_SECONDS + self.memmon_tick()])
        for name, pool, concurrency in compare:
            noop = self.measure("ceiling", f"{name}-noop", pool, concurrency, kind="noop")
            self.ceilings[pool] = noop["tasks_per_second"]
        for name, pool, concurrency in compare:
            self.measure("compare", name, pool, concurrency, ceiling=self.ceilings[pool])
        # The sweep measures the pool, not the overlay's connection budget (check-sizing keeps an
        # overlay within it): MariaDB takes every greenlet's connection while it runs.
        budget = self.stack.max_connections()
        self.stack.max_connections(max(budget, max(options.sweep) + SWEEP_CONNECTION_HEADROOM))
        try:
            for concurrency in sweep:
                self.measure("sweep", f"gevent-{concurrency}", "gevent", concurrency, ceiling=self.ceilings["gevent"])
        finally:
            self.stack.max_connections(budget)
        scenarios["priority"] = self.priority_wait()
        scenarios["memmon"] = self.memmon_restart()
        return {"compare": [name for name, _, _ in compare], "ceilings": self.ceilings, **scenarios}

    def memmon_tick(self) -> int:
        return int(self.stack.model()["services"]["worker"]["environment"]["MEMMON_TICK"])

    def priority_wait(self) -> dict:
        """Priority-2 tasks sent at 5/s while a backlog of priority-7 ones drains."""
        self.progress.start("priority", f"priority-2 tasks behind {self.options.backlog} priority-7 ones")
        variant = Variant(self.stack, f"gevent-{self.gevent_concurrency}-priority", "gevent", self.gevent_concurrency)
        variant.start()
        backlog = self.load(self.options.backlog, priorities={7: 100}, rate=0)
        urgent = self.load(int(5 * self.options.seconds), priorities={2: 100}, rate=5)
        try:
            subprocess.run(["docker", "pause", variant.container], check=True, capture_output=True)
            backlog.send(self.stack)
            subprocess.run(["docker", "unpause", variant.container], check=True, capture_output=True)
            queued = self.stack.queued()
            urgent.send(self.stack)
        finally:
            variant.stop()
            self.stack.purge()
        collect(self.stack, backlog.run)
        records = collect(self.stack, urgent.run)
        result = {"priority_7_queued": queued, "priority_2_sent": urgent.count, "priority_2_completed": len(records),
                  "priority_2_wait_ms": percentiles([r.wait for r in records])}
        print(f"priority: {queued} priority-7 tasks queued; priority-2 queue wait {result['priority_2_wait_ms']}", flush=True)
        self.progress.finish()
        return result

    def memmon_restart(self) -> dict:
        """The stack's own worker: idle memory; a worker over memmon's limit is restarted, and
        how long the worker does not consume around it (a mark task every 0.1 s)."""
        self.progress.start("memmon", "the stack's worker at idle, then over its memory limit")
        worker = self.stack.model()["services"]["worker"]["environment"]
        tick = self.memmon_tick()
        idle = self.stack.exec("worker", "ps", "-eo", "rss=,args=")
        container = self.stack.container("worker")
        usage = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                               capture_output=True, text=True).stdout.strip()
        idle_cores = idle_cpu(container)
        stream = self.stack.diagnostics_in_background("marks-for", seconds=tick + 25)
        time.sleep(3)
        limit_mib = environment.validate(worker, ["WORKER_MEMORY_LIMIT"])["WORKER_MEMORY_LIMIT"] // 2**20
        self.stack.diagnostics("grow-a-worker", mib=limit_mib)
        stream.communicate(timeout=tick + 120)
        marks = json.loads(self.stack.redis("-n", "1", "get", "loadtest:marks") or "[]")
        gaps = [(b[0] - a[0], a[1], b[1]) for a, b in zip(marks, marks[1:])]
        restart_gap = max((g for g in gaps if g[1] != g[2]), default=None)
        processes = [[line.split(None, 1)[1][:80], round(int(line.split()[0]) / 1024, 1)]
                     for line in idle.splitlines() if line.strip()]
        result = {"worker_container_idle": usage, "worker_container_idle_cpu": round(idle_cores, 4),
                  "idle_rss_mib": processes, "memmon_tick_seconds": tick,
                  "not_consuming_seconds": round(restart_gap[0], 2) if restart_gap else None,
                  "monitoring": self.monitoring_cost()}
        print(f"memmon: worker container idle {usage}, {idle_cores:.2%} of a core; not consuming for "
              f"{result['not_consuming_seconds']} s around the restart", flush=True)
        self.progress.finish()
        return result

    def monitoring_cost(self) -> dict:
        """What the metrics cost the worker: counting a task's outcome (task_counts.py, timed in
        the worker image), and the CPU the supervisord listener (its 5 s ticks) has used so far."""
        per_count = self.stack.diagnostics("counting-cost", service="worker")
        processes = self.stack.exec("worker", "ps", "-eo", "times=,etimes=,args=")
        cpu, elapsed = next((int(line.split()[0]), int(line.split()[1])) for line in processes.splitlines()
                            if LISTENER in line)
        return {"count_microseconds": round(per_count * 1e6, 2), "listener_cpu_seconds": cpu,
                "listener_elapsed_seconds": elapsed}


def cores_used(start: tuple, end: tuple) -> float:
    """The cores a container used between two (time, CPU seconds) readings."""
    return round((end[1] - start[1]) / (end[0] - start[0]), 3)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))) * 1024
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "docker": docker.stdout.strip(), "kernel": platform.release(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def own_stack(overlay: str, out: Path) -> Stack:
    env_file = out / "stack.env"
    env_file.unlink(missing_ok=True)
    port = 18000 + os.getpid() % 1000
    envfile.write_env_file(
        str(env_file), COMPOSE_PROJECT_NAME="myauth-loadtest", COMPOSE_FILE=f"compose.yaml:config/overlays/{overlay}.yaml",
        WEB_PORT=str(port), SITE_URL=f"http://localhost:{port}", SCHEDULE_OUTBOUND_TASKS="false",
        DIAGNOSTICS_ENABLED="true")
    stack = Stack(env_file)
    stack.build()
    stack.compose("--profile", "loadtest", "down", "--volumes")  # what an interrupted run left
    stack.compose("up", "--detach", "--wait")
    return stack


def main(argv: list) -> int:
    options = parse_arguments(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    stack = Stack(options.env_file) if options.env_file else own_stack(options.overlay, options.out)
    started_stub = False
    try:
        started_stub = stack.start_esi_stub()
        test = LoadTest(stack, options)
        scenarios = test.run()
    finally:
        if not options.env_file:
            stack.compose("--profile", "loadtest", "down", "--volumes", check=False)
        elif started_stub:
            stack.stop_esi_stub()
    result = {"machine": machine(), "overlay": Path(stack.env["COMPOSE_FILE"].split(":")[1]).stem,
              "worker_limits": test.limits, "latency_ms": options.latency_ms, "jitter_ms": options.jitter_ms,
              "quick": options.quick, "runs": test.results, **scenarios}
    (options.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    report.chart(result, options.out / "result.png")
    print(report.table(result))
    print(f"\nwrote {options.out / 'result.json'} and {options.out / 'result.png'}")
    return 0


LISTENER = "monitoring.supervisor_listener"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
