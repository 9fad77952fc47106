"""QueryIter: a cursor scan's limit, the time-boxed chain, and ViUR's five-entities-per-task chain.

Run: ``python -m bench.queryiter`` (after ``deploy/setup.sh``). Prints its figures and, last:
``queryiter: qi/raw=<x> qi/viur5=<y> qi_shards4/qi_shards1=<s> rss_growth_mb=<z>``

For ``--count`` (20,000) entities of a small kind on the Datastore emulator:

(a) the limit: one process scanning the kind by cursor with large pages, doing nothing else;
(b) QueryIter end to end with a no-op ``handleEntry``: started over HTTP, chunks pushed by the
    durable local queue to gunicorn (2 sync workers), run until the run record says finished;
(c) the same chain with ViUR's policy (5 entities per task, one task per step), same queue, same app;
(d) the run of (b) started with ``shards=4``: four chains over key ranges at once, one finish;

plus the peak RSS growth of the app's worker processes while (b) runs (``VmHWM`` after it minus
``VmRSS`` before it, the peak reset through ``/proc/<pid>/clear_refs``). The dispatcher runs without
queue rate limits, so (c) is bound by its per-step cost and not by the query-iter queue's 50/s.

The Datastore emulator does most of the work and shares the machine's cores with everything else,
so (a), (b) and (d) alternate for ``--rounds`` rounds; each prints its spread (min / median / max
over the rounds, and every round's time), and the last line's ratios compare medians, so a stalled
run shows instead of hiding behind a best-of. For the median run of (b) and (d) the CPU seconds of
the emulator, the app's workers and the dispatcher are printed beside the wall time: where the time
goes (on 2 cores the emulator bounds both, so shards gain little there).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks.queryiter import QueryIter
from core.tasks.queryiter.runs import FINISHED, get_run

KIND = "bench_qi_item"
WARM_KIND = "bench_qi_warm"


class NoOp(QueryIter):
    """Handles every entity by doing nothing: what is left is the machinery."""

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        pass


class ViurFive(NoOp):
    """ViUR's policy: five entities per task, a task per step."""

    pageSize = 5
    maxEntriesPerChunk = 5


POLICIES: dict[str, type[QueryIter]] = {"qi": NoOp, "viur5": ViurFive}


class BenchQueryIter(Module):
    @exposed(methods=("POST",))
    def start(self, policy: str, kind: str, shards: str = "1") -> dict[str, str]:
        return {"run": POLICIES[policy].startIterOnQuery(db.Query(kind), shards=int(shards))}


def bench_app() -> Any:
    """gunicorn's app factory (``bench.queryiter:bench_app()``)."""
    from core import create_app

    return create_app({"benchqi": BenchQueryIter})


# --- measuring -----------------------------------------------------------------------------------

def fill(kind: str, count: int) -> None:
    entities = []
    for i in range(1, count + 1):
        entity = db.Entity(db.key(kind, i))
        entity["n"] = i
        entities.append(entity)
    db.put(entities)


def raw_scan(kind: str) -> tuple[int, float]:
    """Entities and seconds of one cursor scan of ``kind`` in large pages."""
    started = time.perf_counter()
    count = sum(1 for _ in db.Query(kind).iter(page_size=db.DEFAULT_PAGE_SIZE))
    return count, time.perf_counter() - started


def run_chain(url: str, policy: str, kind: str, timeout: float, shards: int = 1) -> tuple[float, Any]:
    """Start a run over HTTP and wait until its record says finished; wall seconds and the run."""
    session = requests.Session()
    started = time.perf_counter()
    response = session.post(f"{url}/benchqi/start", data={"policy": policy, "kind": kind, "shards": str(shards)})
    response.raise_for_status()
    run_id = response.json()["run"]
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(run_id)
        if run is not None and run.status == FINISHED:
            return time.perf_counter() - started, run
        if run is not None and run.status != "running":
            raise RuntimeError(f"run {run_id} ended {run.status}: {run.last_error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not finished after {timeout} s: {run}")
        time.sleep(0.05)  # the emulator shares the cores: polling must not slow the run down


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds so far of each group of processes (``/proc/<pid>/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        totals[name] = total / tick
    return totals


def timed_chain(url: str, kind: str, timeout: float, shards: int,
                pids: dict[str, list[int]]) -> tuple[float, Any, dict[str, float]]:
    """:func:`run_chain` of the no-op policy, with the CPU seconds each group of processes spent on it."""
    before = cpu_seconds(pids)
    seconds, run = run_chain(url, "qi", kind, timeout, shards)
    after = cpu_seconds(pids)
    return seconds, run, {name: after[name] - before[name] for name in pids}


def spread(seconds: list[float]) -> str:
    """``min / median / max`` of some rounds' seconds, then each round's in the order they ran."""
    return (f"min {min(seconds):.2f} / median {statistics.median(seconds):.2f} / max {max(seconds):.2f} s "
            f"over {len(seconds)} rounds: {', '.join(f'{s:.2f}' for s in seconds)}")


def median_run(runs: list[Any]) -> Any:
    """The round whose wall time (its first field) is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda run: run[0])
    return ordered[(len(ordered) - 1) // 2]


def _where(seconds: float, cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {used:.1f} s CPU ({used / seconds:.2f} cores)" for name, used in cpu.items())


class PeakMemory:
    """Peak RSS growth of some processes over a block (kernel high-water mark, sampled as a fallback)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before: dict[int, int] = {}
        self.sampled: dict[int, int] = {}
        self.exact = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        for pid in self.pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                self.exact = False
            self.before[pid] = _status_kb(pid, "VmRSS")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                try:
                    self.sampled[pid] = max(self.sampled.get(pid, 0), _status_kb(pid, "VmRSS"))
                except (OSError, RuntimeError):
                    pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = {pid: max(self.sampled.get(pid, 0), _status_kb(pid, "VmHWM") if self.exact else 0)
                     for pid in self.pids}

    @property
    def growth_mb(self) -> float:
        return max((self.peak[pid] - self.before[pid]) / 1024 for pid in self.pids)

    @property
    def peak_mb(self) -> float:
        return max(self.peak.values()) / 1024


def main() -> None:
    from core.config import Settings
    from core.devserver.datastore_emulator import start_datastore_emulator
    from core.devserver.stack import LocalStack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="entities in the kind (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b) (3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a chain may take (900)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-queryiter-"))
    datastore = start_datastore_emulator()
    try:
        stack = LocalStack(data_dir=tmp / "local", datastore=datastore, persist=False, cron=False,
                           app_module="bench.queryiter:bench_app()", dispatcher_args=("--no-rate-limits",))
        with stack:
            db.configure(Settings(project=stack.settings.project, datastore_emulator_host=datastore.host))
            print(f"gunicorn: {stack.workers} sync workers on {stack.url}; Python {sys.version.split()[0]}; "
                  f"Datastore emulator {datastore.host}")
            fill(KIND, args.count)
            fill(WARM_KIND, 2_000)
            # The emulator's JIT and both workers' clients warm up first.
            raw_scan(KIND)
            run_chain(stack.url, "qi", KIND, args.timeout)
            for _ in range(2):
                run_chain(stack.url, "viur5", WARM_KIND, args.timeout)
            # Raw scans and chains alternate, so all see the same load on the shared cores; medians compared.
            scans, chains, sharded = [], [], []
            workers = stack.worker_pids()
            assert stack.dispatcher is not None
            pids = {"emulator": [datastore.pid], "app": workers, "dispatcher": [stack.dispatcher.pid]}
            run_chain(stack.url, "qi", WARM_KIND, args.timeout, shards=4)
            with PeakMemory(workers) as memory:
                for _ in range(args.rounds):
                    scans.append(raw_scan(KIND))
                    chains.append(timed_chain(stack.url, KIND, args.timeout, 1, pids))
                    sharded.append(timed_chain(stack.url, KIND, args.timeout, 4, pids))
            assert all(count == args.count for count, _ in scans), scans
            raw_seconds = statistics.median(seconds for _, seconds in scans)
            raw = args.count / raw_seconds
            print(f"(a) raw cursor scan, pages of {db.DEFAULT_PAGE_SIZE}: {args.count} entities, median "
                  f"{raw_seconds:.2f} s = {raw:.0f}/s ({spread([seconds for _, seconds in scans])})")
            assert all(run.processed == args.count for _, run, _ in chains), chains
            qi_seconds, run, qi_cpu = median_run(chains)
            qi = args.count / statistics.median(seconds for seconds, _, _ in chains)
            print(f"(b) QueryIter, no-op handleEntry: {run.processed} entities, median {args.count / qi:.2f} s = "
                  f"{qi:.0f}/s in {run.step + 1} step(s) ({spread([seconds for seconds, _, _ in chains])})")
            print(f"    where the time goes (median run): {_where(qi_seconds, qi_cpu)}")
            assert all(r.processed == args.count and len(r.shards) == 4 for _, r, _ in sharded), sharded
            shard_seconds, shard_run, shard_cpu = median_run(sharded)
            qi4 = args.count / statistics.median(seconds for seconds, _, _ in sharded)
            print(f"(d) QueryIter, shards=4: {shard_run.processed} entities, median {args.count / qi4:.2f} s = "
                  f"{qi4:.0f}/s, shards of {', '.join(str(s.processed) for s in shard_run.shards)} in "
                  f"{sum(s.step + 1 for s in shard_run.shards)} steps "
                  f"({spread([seconds for seconds, _, _ in sharded])})")
            print(f"    where the time goes (median run): {_where(shard_seconds, shard_cpu)}")
            print(f"    app workers {workers}: peak RSS {memory.peak_mb:.1f} MB, growth over the {args.rounds} rounds "
                  f"{memory.growth_mb:.1f} MB ({'kernel high-water mark' if memory.exact else 'sampled'})")

            viur_seconds, viur_run = run_chain(stack.url, "viur5", KIND, args.timeout)
            viur = viur_run.processed / viur_seconds
            print(f"(c) ViUR policy, 5 entities per task: {viur_run.processed} entities in {viur_seconds:.2f} s "
                  f"= {viur:.0f}/s in {viur_run.step + 1} steps ({viur_seconds / (viur_run.step + 1) * 1000:.1f} "
                  "ms per step)")
    finally:
        datastore.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"queryiter: qi/raw={qi / raw:.2f} qi/viur5={qi / viur:.1f} qi_shards4/qi_shards1={qi4 / qi:.2f} "
          f"rss_growth_mb={memory.growth_mb:.1f}")


if __name__ == "__main__":
    main()
