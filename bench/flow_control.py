"""Flow control: the Datastore operations each option costs per task, counted on the client.

Run: ``python -m bench.flow_control`` (after ``deploy/setup.sh``). An in-process app on the
Datastore emulator and the in-process queue (its test clock moves time); for each option, the RPCs
per task when it is deferred and when it runs (lookups, commits, queries: each one round trip),
beside untracked and tracked calls without options. Prints one line per option, and, last:
``flow_control: <option>=<enqueue>+<execution> ...``
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import create_app
from core.config import Settings
from core.devserver.datastore_emulator import start_datastore_emulator
from core.tasks import callDeferred
from core.testing import TaskQueue
from tests.services.datastore_rpcs import RpcCounter

PROJECT = "bench-project"


@callDeferred
def plain(n: int) -> None:
    """No option."""


@callDeferred(expires=60)
def expiring(n: int) -> None:
    """``expires=60``."""


@callDeferred(unique=True)
def unique(n: int) -> None:
    """``unique=True`` (always tracked)."""


@callDeferred(debounce=2, debounce_key="doc-{n}")
def debounced(n: int) -> None:
    """``debounce=2`` per key: every call here has its own key, so each one runs."""


@callDeferred(debounce=2)
def debounced_together(n: int) -> None:
    """``debounce=2`` on the target alone: the calls collapse into the last one's run."""


@callDeferred(rate_limit="100000/s")
def rate_limited(n: int) -> None:
    """``rate_limit=`` high enough that every start is admitted on its first shard."""


def measure(queue: TaskQueue, rpcs: RpcCounter, defer: Callable[[int], Any], calls: int, *,
            late: float = 0.0, run: bool = True) -> tuple[float, float]:
    """RPCs per task: (enqueue, execution); ``late`` seconds pass between the calls and the run."""
    rpcs.take()
    for n in range(calls):
        defer(n)
    enqueue = rpcs.take() / calls
    if not run:
        return enqueue, 0.0
    if late:
        queue.clock.advance(late)
    queue.run_pending()
    return enqueue, rpcs.take() / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    datastore = start_datastore_emulator()
    figures: dict[str, tuple[float, float]] = {}
    try:
        settings = Settings(project=PROJECT, datastore_emulator_host=datastore.host, tasks_backend="inline",
                            tasks_secret="bench-secret", secret_key="bench-key", local_data_dir=tmp)
        app = create_app({}, settings=settings, startup_tasks=False)
        with app.app_context(), RpcCounter().counting() as rpcs:
            queue = TaskQueue(app)
            calls = args.calls
            figures["untracked"] = measure(queue, rpcs, plain, calls)
            figures["tracked"] = measure(queue, rpcs, lambda n: plain(n, _track=True), calls)
            figures["expires_in_time"] = measure(queue, rpcs, expiring, calls)
            figures["expires_late"] = measure(queue, rpcs, expiring, calls, late=61)
            figures["expires_late_tracked"] = measure(queue, rpcs, lambda n: expiring(n, _track=True), calls,
                                                      late=61)
            figures["unique"] = measure(queue, rpcs, unique, calls)
            measure(queue, rpcs, lambda n: unique(n + calls), calls, run=False)
            figures["unique_duplicate_call"] = measure(queue, rpcs, lambda n: unique(n + calls), calls, run=False)
            queue.run_pending()
            figures["debounce"] = measure(queue, rpcs, debounced, calls, late=3)
            figures["debounce_collapsed"] = measure(queue, rpcs, debounced_together, calls, late=3)
            figures["rate_limit"] = measure(queue, rpcs, rate_limited, calls)
    finally:
        datastore.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for label, (enqueue, execution) in figures.items():
        print(f"{label:24} Datastore RPCs per task: {enqueue:.2f} when deferred, {execution:.2f} when it runs")
    print("flow_control: " + " ".join(f"{label}={enqueue:g}+{execution:g}"
                                      for label, (enqueue, execution) in figures.items()))


if __name__ == "__main__":
    main()
