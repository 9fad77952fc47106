"""Ours against Celery 5, dramatiq and RQ: the same task body, systems alternating, medians.

Run: ``deploy/bench-setup.sh && .venv/bin/python -m bench.peers`` (``--tasks 500 --rounds 1
--latency-tasks 50`` for a quick smoke run). Progress goes to stderr; a table and, last:
``peers: ours/celery=<> ours/dramatiq=<> ours_lean/dramatiq=<> ours/floor=<> ours_lean/floor_lean=<>
p50_ours/p50_celery=<>`` on one line (end-to-end rates, and the latency medians).

Every task body is one Redis ``INCR`` on a counter (the latency task instead appends the time its
body started beside the time its enqueue call began). The systems:

- ours: the example app on the local stack as app.yaml runs it (gunicorn, 2 threaded workers x 8
  threads), tasks queued by deferred calls into the durable local queue and pushed over HTTP by
  its dispatcher (queue rates off, as the peers have none), run by the task handler;
- ours_lean: the same on the lean server, granian (2 workers x 8 blocking threads, WSGI);
- Celery 5 with its Redis broker, one worker with the prefork pool of 2 processes;
- dramatiq with its Redis broker, 2 processes (its default 8 threads each);
- RQ, two ``SimpleWorker`` processes.

Each round starts, for each system in turn (the order rotates per round), a redis-server of its
own on a free port (no persistence) and the system's processes, warms them up, and measures:
(a) end to end: tasks/s from the first of ``--tasks`` enqueue calls, made by one process with the
workers running, until the counter reaches ``--tasks``; (b) drain: ``--tasks`` queued with the
workers stopped, then tasks/s from the first task seen until the last; (c) latency: one task every
20 ms (``--latency-tasks``), the delay from each enqueue call to its body, p50 and p99; and the
CPU time per task of the system's processes and its redis-server during (a), read from ``/proc``
(the enqueuing process left out): less blurred than rates on a loaded machine. Each round also
measures the floor the same way on each server ours runs on (:class:`FloorSystem`: ``floor`` on
gunicorn, ``floor_lean`` on granian; ``--no-floor`` skips them): ours' stack with a bare WSGI app in
place of ours, running the same task body, its tasks queued straight into the local queue; what one
HTTP request per task costs on that server before any of our code runs, a ceiling for ours' ratios,
printed above the last line with its ratios to the peers. The peers
run from ``.venv-bench`` and ours from ``.venv``: each system's workers and enqueuer are
subprocesses with their own interpreter, started in their own process groups and stopped by PID.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from core.devserver.datastore_emulator import start_datastore_emulator
from core.devserver.ports import free_port, wait_for_port
from core.devserver.processes import stop_process_group
from core.devserver.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".venv-bench"
#: The Redis client alone, for ours (on its PYTHONPATH beside the app's virtualenv).
OURS_SITE = BENCH_VENV / "ours"
SYSTEMS = ("ours", "ours_lean", "celery", "dramatiq", "rq")
PEERS = SYSTEMS[2:]
#: The floor measured beside each system that runs on ours' stack (the same server, a bare app).
FLOORS = {"ours": "floor", "ours_lean": "floor_lean"}
WARM_TASKS = 50


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- figures ------------------------------------------------------------------------------------

def median(values: Iterable[float | None]) -> float | None:
    """The median of the values measured (``None``: a round that failed); ``None`` if none was."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100): a value that was measured."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


@dataclasses.dataclass
class Figures:
    """One system's figures, a value (or ``None`` for a failed step) per round."""

    e2e: list[float | None] = dataclasses.field(default_factory=list)
    enqueue: list[float | None] = dataclasses.field(default_factory=list)
    drain: list[float | None] = dataclasses.field(default_factory=list)
    p50: list[float | None] = dataclasses.field(default_factory=list)
    p99: list[float | None] = dataclasses.field(default_factory=list)
    #: CPU µs per task of the system's processes and its redis-server during (a).
    cpu: list[float | None] = dataclasses.field(default_factory=list)

    def median(self, name: str) -> float | None:
        return median(getattr(self, name))


def format_table(figures: dict[str, Figures]) -> str:
    """Medians per system, and ours divided by each (rates) or each divided into ours (latency)."""
    ours = figures.get("ours", Figures())
    header = ("system", "end to end/s", "drain/s", "enqueue/s", "p50 ms", "p99 ms", "CPU us/task",
              "ours/it e2e", "ours/it drain", "p50 ours/it", "CPU ours/it")
    rows = [header]
    for name, f in figures.items():
        rows.append((name, fmt(f.median("e2e")), fmt(f.median("drain")), fmt(f.median("enqueue")),
                     fmt(f.median("p50"), 1), fmt(f.median("p99"), 1), fmt(f.median("cpu")),
                     fmt(ratio(ours.median("e2e"), f.median("e2e")), 2),
                     fmt(ratio(ours.median("drain"), f.median("drain")), 2),
                     fmt(ratio(ours.median("p50"), f.median("p50")), 2),
                     fmt(ratio(ours.median("cpu"), f.median("cpu")), 2)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: The end-to-end ratios of the last line, as (numerator, denominator) systems.
SUMMARY_RATIOS = (("ours", "celery"), ("ours", "dramatiq"), ("ours_lean", "dramatiq"), ("ours", "floor"),
                  ("ours_lean", "floor_lean"))


def summary_line(figures: dict[str, Figures]) -> str:
    """The last line: ours' end-to-end rates (on each server) over the peers' and the floors', and
    ours' latency p50 over Celery's."""
    def e2e(name: str) -> float | None:
        return figures.get(name, Figures()).median("e2e")

    parts = [f"{a}/{b}={fmt(ratio(e2e(a), e2e(b)), 2)}" for a, b in SUMMARY_RATIOS]
    p50 = ratio(figures.get("ours", Figures()).median("p50"), figures.get("celery", Figures()).median("p50"))
    return "peers: " + " ".join(parts) + f" p50_ours/p50_celery={fmt(p50, 2)}"


def stat_cpu(stat: str) -> tuple[int, int]:
    """``(process group, user + system clock ticks)`` from the text of a ``/proc/<pid>/stat``."""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parens
    return int(fields[2]), int(fields[11]) + int(fields[12])


def group_cpu_seconds(groups: Collection[int]) -> float:
    """CPU seconds used so far by the live processes (all threads) of the given process groups."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                group, used = stat_cpu(Path(entry.path, "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if group in groups:
                ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")


def rotated(systems: Sequence[str], round_index: int) -> list[str]:
    """The systems in the order of one round: each round starts one later, so none always goes first."""
    shift = round_index % len(systems) if systems else 0
    return [*systems[shift:], *systems[:shift]]


# --- processes ----------------------------------------------------------------------------------

def start_process(args: Sequence[str], *, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(args), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


class Redis:
    """A redis-server of one system's run: a free loopback port, nothing written to disk."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is missing: run deploy/bench-setup.sh")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "redis.log", "ab") as log:
            self.process = start_process(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(folder), "--daemonize", "no"], env=dict(os.environ), log=log)
        if not wait_for_port(self.port, timeout=20):
            self.stop()
            raise RuntimeError(f"redis-server did not listen on {self.port}: see {folder / 'redis.log'}")

    def stop(self) -> None:
        stop_process_group(self.process)


class System:
    """A system's worker processes and the interpreter its enqueuer runs with."""

    name = ""
    #: The system whose enqueuer :mod:`bench.peers_driver` runs, if not the one named ``name``.
    enqueuer = ""

    def __init__(self, redis: Redis, folder: Path) -> None:
        self.redis = redis
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def python(self) -> str:
        return str(BENCH_VENV / "bin" / "python")

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update({"PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": self.redis.url})
        return env

    def worker_commands(self) -> list[list[str]]:
        raise NotImplementedError

    def start(self) -> None:
        self.start_workers()

    def start_workers(self) -> None:
        with open(self.folder / f"{self.name}.log", "ab") as log:
            self.processes = [start_process(args, env=self.env, log=log) for args in self.worker_commands()]

    def groups(self) -> set[int]:
        """The process groups (each started in its own session) whose CPU is the system's cost."""
        return {p.pid for p in self.processes} | {self.redis.process.pid}

    def stop_workers(self) -> None:
        for process in self.processes:
            stop_process_group(process)
        self.processes = []

    def stop(self) -> None:
        self.stop_workers()

    def check(self) -> None:
        """Raise if a worker process died (its log says why)."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited with {process.returncode}: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Celery(System):
    name = "celery"

    def worker_commands(self) -> list[list[str]]:
        return [[str(BENCH_VENV / "bin" / "celery"), "-A", "bench.peer_tasks.celery_app", "worker",
                 "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", "bench@%h"]]


class Dramatiq(System):
    name = "dramatiq"

    def worker_commands(self) -> list[list[str]]:
        return [[str(BENCH_VENV / "bin" / "dramatiq"), "bench.peer_tasks.dramatiq_actors", "--processes", "2",
                 "--path", str(ROOT)]]


class Rq(System):
    name = "rq"

    def worker_commands(self) -> list[list[str]]:
        return [[str(BENCH_VENV / "bin" / "rq"), "worker", "--worker-class", "rq.SimpleWorker", "--url",
                 self.redis.url, "--path", str(ROOT), "--quiet", "--name", f"bench-{i}-{self.redis.port}"]
                for i in range(2)]


class Ours(System):
    """The local stack: gunicorn as app.yaml runs it, the durable local queue and its dispatcher."""

    name = "ours"
    enqueuer = "ours"  # on every server
    app_module = "bench.peer_tasks.ours_app:app"
    server = "gunicorn"

    def __init__(self, redis: Redis, folder: Path, datastore: Any) -> None:
        super().__init__(redis, folder)
        self.stack = LocalStack(
            data_dir=folder / "local", datastore=datastore, persist=False, cron=False, server=self.server,
            app_module=self.app_module, workers=2, worker_class="gthread", threads=8,
            dispatcher_args=("--no-rate-limits",),
            extra_env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(OURS_SITE)]), "BENCH_REDIS_URL": redis.url})

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def start(self) -> None:
        self.stack.start()

    def groups(self) -> set[int]:
        processes = (self.stack.server_process, self.stack.dispatcher)
        return {p.pid for p in processes if p is not None} | {self.redis.process.pid}

    def start_workers(self) -> None:
        self.stack.start_dispatcher()

    def stop_workers(self) -> None:
        self.stack.stop_dispatcher()

    def stop(self) -> None:
        self.stack.stop()

    def check(self) -> None:
        for process in (self.stack.server_process, self.stack.dispatcher):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{self.name}: a process exited with {process.returncode}: "
                                   f"{self.stack.log_tail(self.server)}{self.stack.log_tail('dispatcher')}")


class OursLean(Ours):
    """Ours on the lean server: granian in place of gunicorn, everything else the same."""

    name = "ours_lean"
    server = "granian"


class FloorSystem(Ours):
    """The floor: ours' stack with a bare WSGI app (:mod:`bench.peer_tasks.floor_app`) in place of
    ours, running the same task body; its driver queues tasks straight into the local queue."""

    name = "floor"
    enqueuer = "floor"
    app_module = "bench.peer_tasks.floor_app:app"


class FloorLean(FloorSystem):
    """The floor on granian: what ``ours_lean`` can reach at most."""

    name = "floor_lean"
    server = "granian"


PEER_CLASSES: dict[str, type[System]] = {"celery": Celery, "dramatiq": Dramatiq, "rq": Rq}
#: The systems run on ours' local stack.
STACK_CLASSES: dict[str, type[Ours]] = {cls.name: cls for cls in (Ours, OursLean, FloorSystem, FloorLean)}


# --- one system, one round ----------------------------------------------------------------------

def driver(system: System, mode: str, count: int, *, timeout: float, interval: float = 0.02,
           ) -> subprocess.Popen[str]:
    args = [system.python, "-m", "bench.peers_driver", system.enqueuer or system.name, mode, str(count),
            "--timeout", str(timeout), "--interval", str(interval)]
    return subprocess.Popen(args, env=system.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def result_of(process: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(process)
        raise RuntimeError(f"{what}: the driver did not finish within {timeout:.0f} s") from None
    except BaseException:  # Ctrl-C: the driver runs in its own session and would not see it
        stop_process_group(process)
        raise
    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"{what}: the driver exited with {process.returncode}: {err[-2000:]}") from None
    if "error" in result:
        raise RuntimeError(f"{what}: {result['error']}")
    return result


def run_driver(system: System, mode: str, count: int, timeout: float) -> dict[str, Any]:
    return result_of(driver(system, mode, count, timeout=timeout), f"{system.name} {mode}", timeout + 60)


def expect_line(process: subprocess.Popen[str], word: str) -> bool:
    """Wait for the driver to print ``word`` alone on a line (``False`` if it ended without)."""
    assert process.stdout is not None
    try:
        return process.stdout.readline().strip() == word
    except BaseException:
        stop_process_group(process)
        raise


def end_to_end(system: System, count: int, timeout: float) -> tuple[dict[str, Any], float | None]:
    """The driver's (a) figures, and the CPU µs per task the system used meanwhile."""
    groups = system.groups()
    process = driver(system, "e2e", count, timeout=timeout)
    cpu = group_cpu_seconds(groups) if expect_line(process, "start") else None
    result = result_of(process, f"{system.name} e2e", timeout + 60)  # or raises with the driver's error
    return result, None if cpu is None else (group_cpu_seconds(groups) - cpu) / count * 1e6


def drain(system: System, count: int, timeout: float) -> float:
    """Queue ``count`` tasks with the workers stopped, start them, and return the driver's drain rate."""
    system.stop_workers()
    process = driver(system, "drain", count, timeout=timeout)
    if expect_line(process, "filled"):  # every task is queued
        system.start_workers()
    return result_of(process, f"{system.name} drain", timeout + 60)["rate"]  # or raises with the driver's error


def measure(system: System, figures: Figures, args: argparse.Namespace) -> None:
    """Warm ``system`` up, then (a) end to end, (c) latency and (b) drain; ``None`` for a failed step."""
    timeout = 120 + args.tasks / 50
    run_driver(system, "warm", WARM_TASKS, timeout=120)
    steps: dict[str, Any] = {}
    for step in ("e2e", "latency", "drain"):
        try:
            system.check()
            if step == "e2e":
                result, steps["cpu"] = end_to_end(system, args.tasks, timeout)
                steps["e2e"], steps["enqueue"] = result["rate"], result["enqueue_rate"]
            elif step == "latency":
                result = run_driver(system, "latency", args.latency_tasks, 120 + args.latency_tasks * 0.1)
                steps["p50"] = percentile(result["latencies_ms"], 50)
                steps["p99"] = percentile(result["latencies_ms"], 99)
            else:
                steps["drain"] = drain(system, args.tasks, timeout)
        except RuntimeError as exc:
            progress(f"  {system.name} {step} failed: {exc}")
    for field in dataclasses.fields(Figures):
        getattr(figures, field.name).append(steps.get(field.name))
    progress(f"  {system.name}: end to end {fmt(steps.get('e2e'))}/s (enqueue {fmt(steps.get('enqueue'))}/s), "
             f"drain {fmt(steps.get('drain'))}/s, latency p50 {fmt(steps.get('p50'), 1)} ms "
             f"p99 {fmt(steps.get('p99'), 1)} ms, CPU {fmt(steps.get('cpu'))} us/task")


#: What answers the floor's requests, by floor.
FLOOR_SERVERS = {"floor": "gunicorn 2 gthread workers x 8 threads",
                 "floor_lean": "granian 2 workers x 8 blocking threads"}


def floor_line(figures: dict[str, Figures], name: str = "floor") -> str:
    """A floor's medians, and the floor over dramatiq and Celery: a ceiling for ours' ratios on its server.

    The floor is ours' HTTP path and the task body with none of our code between (see
    :class:`FloorSystem`): no change to our code can lift ours above it.
    """
    floor = figures[name]
    line = (f"{name} (ours' HTTP path and the task body alone: {FLOOR_SERVERS[name]} answering "
            f"a bare WSGI app, our dispatcher and local queue): end to end {fmt(floor.median('e2e'))}/s, "
            f"drain {fmt(floor.median('drain'))}/s, CPU {fmt(floor.median('cpu'))} us/task")
    for peer in ("dramatiq", "celery"):
        if peer in figures:
            line += (f"; {name}/{peer}: end to end {fmt(ratio(floor.median('e2e'), figures[peer].median('e2e')), 2)}, "
                     f"drain {fmt(ratio(floor.median('drain'), figures[peer].median('drain')), 2)}, "
                     f"CPU {fmt(ratio(floor.median('cpu'), figures[peer].median('cpu')), 2)}")
    return line


def run_system(name: str, folder: Path, datastore: Any, figures: Figures, args: argparse.Namespace) -> None:
    """One round of one system: its own redis-server and processes, all stopped at the end."""
    rounds = len(figures.e2e)
    redis = Redis(folder)
    try:
        stack_class = STACK_CLASSES.get(name)
        system = stack_class(redis, folder, datastore) if stack_class else PEER_CLASSES[name](redis, folder)
        try:
            system.start()
            measure(system, figures, args)
        finally:
            system.stop()
    except RuntimeError as exc:  # a system that cannot start or warm up loses the round, not the run
        progress(f"  {name} failed: {exc}")
        if len(figures.e2e) == rounds:
            for field in dataclasses.fields(Figures):
                getattr(figures, field.name).append(None)
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks of (a) and (b) per system and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-tasks", type=int, default=300, help="tasks of (c), one every 20 ms")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset, comma-separated")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floors: ours' HTTP path and the task body alone on each server")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    if any(s in PEERS for s in systems) and not (BENCH_VENV / "bin" / "python").exists():
        raise SystemExit(".venv-bench is missing: run deploy/bench-setup.sh")
    on_stack = [s for s in systems if s in FLOORS]
    if on_stack and not (OURS_SITE / "redis").exists():
        raise SystemExit(f"{OURS_SITE} is missing: run deploy/bench-setup.sh")
    if "ours_lean" in systems and importlib.util.find_spec("granian") is None:
        raise SystemExit("granian is missing: pip install -r requirements-dev.txt (or the lean extra)")

    measured = [*systems, *(FLOORS[s] for s in on_stack)] if args.floor else systems
    figures = {name: Figures() for name in measured}
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    datastore = start_datastore_emulator() if on_stack else None
    started = time.monotonic()
    try:
        for round_index in range(args.rounds):
            for name in rotated(measured, round_index):
                progress(f"round {round_index + 1}/{args.rounds}: {name}")
                run_system(name, tmp / f"{name}-{round_index}", datastore, figures[name], args)
    finally:
        if datastore is not None:
            datastore.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(f"{args.tasks} tasks (a, b) and {args.latency_tasks} at 20 ms intervals (c) per system; "
          f"medians of {args.rounds} rounds; Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(format_table(figures))
    for floor in FLOORS.values():
        if floor in figures:
            print(floor_line(figures, floor))
    print(summary_line(figures))


if __name__ == "__main__":
    main()
