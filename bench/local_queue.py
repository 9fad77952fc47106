"""The local queue's own costs: the dispatcher's CPU per task, and enqueue-to-body latency at low load.

Run: ``python -m bench.local_queue`` (after ``deploy/setup.sh``). Prints its figures and, last:
``local_queue: dispatcher_us_per_task=<x> latency_p50_ms=<y> latency_p99_ms=<z>``

(a) the dispatcher's CPU (user + system, read from ``/proc``) per task while it drains a batch of
    no-op tasks to a bare WSGI app under gunicorn (2 threaded workers), divided by the tasks: CPU
    time, not wall time, so a loaded machine blurs it less;
(b) latency from the deferred call to the first line of the task body, one task every 20 ms, on
    the local stack (Datastore emulator, dispatcher, gunicorn) serving :mod:`bench.latency_app`.

:func:`measure_latency` is system-agnostic: give it a ``submit(i, port)`` that enqueues task ``i``
whose body sends ``str(i)`` as a UDP datagram to ``127.0.0.1:port`` first thing
(:func:`bench.latency_app.stamp` is ours).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.latency_app import create_latency_app, stamp
from core.devserver.ports import free_port
from core.devserver.processes import stop_process_group
from core.devserver.stack import LocalStack
from core.tasks.transports.base import TaskRequest
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

_HEADERS = {
    "Content-Type": "application/json",
    "X-Tasks-Signature": "v1=" + "0" * 64,
    "X-Tasks-Kind": "deferred",
}


def noop_app(environ: dict, start_response: Callable) -> list[bytes]:
    """The bare WSGI app the dispatcher pushes to in (a): reads the body, answers 200."""
    stream = environ["wsgi.input"]
    stream.read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def dispatcher_cpu(count: int = 20_000, *, body_size: int = 400, tmp: Path | None = None) -> float:
    """The dispatcher's CPU µs per task draining ``count`` tasks to a bare app (a)."""
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        root = Path(folder)
        port = free_port()
        db = root / "queue.sqlite3"
        gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--worker-class", "gthread", "--threads", "4", "--no-control-socket",
                    "bench.local_queue:noop_app"]
        dispatcher = [sys.executable, "-m", "core.tasks.transports.local", "--db", str(db),
                      "--url", f"http://127.0.0.1:{port}", "--no-rate-limits", "--log-level", "WARNING"]
        store = LocalQueueStore(db)
        transport = LocalTransport(store)
        with _process(gunicorn, root / "gunicorn.log"), _process(dispatcher, root / "dispatcher.log") as proc:
            _wait(lambda: _answers(port), 30, "gunicorn")
            time.sleep(1.0)  # the dispatcher's start-up (imports, schema) is not per-task cost
            before = _cpu_seconds(proc.pid)
            body = b"x" * body_size
            for start in range(0, count, 1000):
                batch = [TaskRequest(queue="default", path="/_tasks/deferred", body=body, headers=_HEADERS)
                         for _ in range(min(1000, count - start))]
                transport.enqueue_many(batch)
            _wait(lambda: store.pending() == 0, 600, "the drain")
            after = _cpu_seconds(proc.pid)
            user, system = after[0] - before[0], after[1] - before[1]
            counts = store.counts()
        store.close()
    per_task = (user + system) / count * 1e6
    print(f"(a) dispatcher CPU: {user:.2f} s user + {system:.2f} s system for {count} tasks "
          f"= {per_task:.1f} µs/task  [{counts}]")
    return per_task


@dataclasses.dataclass(frozen=True)
class Latency:
    """Enqueue-to-body latencies in milliseconds."""

    samples: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def measure_latency(submit: Callable[[int, int], object], *, count: int = 300, interval: float = 0.02,
                    warmup: int = 10, timeout: float = 10.0) -> Latency:
    """Latency from ``submit(i, port)`` to the task body's datagram ``str(i)`` on ``port``.

    One task every ``interval`` seconds (low load); the first ``warmup`` are not counted. The
    clock is this process's: the time ``submit`` is called and the time the datagram arrives.
    """
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}

    def receive(until: float) -> None:
        while True:
            wait = until - time.perf_counter()
            if wait <= 0 or not select.select([receiver], [], [], wait)[0]:
                return
            data = receiver.recv(64)
            arrived.setdefault(int(data), time.perf_counter())

    try:
        total = warmup + count
        next_at = time.perf_counter()
        for i in range(total):
            sent[i] = time.perf_counter()
            submit(i, port)
            next_at += interval
            receive(next_at)
        give_up = time.perf_counter() + timeout
        while len(arrived) < total and time.perf_counter() < give_up:
            receive(min(give_up, time.perf_counter() + 0.1))
    finally:
        receiver.close()
    missing = [i for i in range(total) if i not in arrived]
    if missing:
        raise RuntimeError(f"{len(missing)} task(s) never ran, e.g. {missing[:5]}")
    return Latency([(arrived[i] - sent[i]) * 1000 for i in range(warmup, total)])


def local_latency(count: int = 300, *, tmp: Path | None = None) -> Latency:
    """(b) on the local stack serving :mod:`bench.latency_app`, the deferred call made in this process."""
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        stack = LocalStack(data_dir=Path(folder), persist=False, cron=False, app_module="bench.latency_app:app")
        stack.start()
        try:
            app = create_latency_app(stack.settings)
            with app.app_context():
                stamp(0, 0)  # the first call opens the queue file; not part of any sample
                latency = measure_latency(lambda i, port: stamp(port, i), count=count)
        finally:
            stack.stop()
    print(f"(b) latency, one task every 20 ms: p50 {latency.p50:.2f} ms, p99 {latency.p99:.2f} ms "
          f"(max {max(latency.samples):.2f} ms, {len(latency.samples)} tasks)")
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.local_queue", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks drained for (a)")
    parser.add_argument("--latency-tasks", type=int, default=300, help="tasks timed for (b)")
    args = parser.parse_args()
    per_task = dispatcher_cpu(args.tasks)
    latency = local_latency(args.latency_tasks)
    print(f"local_queue: dispatcher_us_per_task={per_task:.1f} latency_p50_ms={latency.p50:.2f} "
          f"latency_p99_ms={latency.p99:.2f}")


if __name__ == "__main__":
    main()
