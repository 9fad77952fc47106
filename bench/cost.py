"""Our own CPU per task, in process: a deferred call against the bare transport call, a push
against a bare WSGI app running the same body.

Run: ``python -m bench.cost`` (after ``deploy/bench-setup.sh``: the task body is one Redis
``INCR``, as in ``bench.peers``). Prints its figures and, last:
``cost: push_us/bare_us=<x> enqueue_us/bare_us=<y> push_us=<p> bare_us=<b> enqueue_us=<e> transport_us=<t>``

- **enqueue**: ``incr()``, a ``@callDeferred`` of ``bench.peer_tasks.ours_app``, called in an app
  context (outside a request each call is one durable local-queue transaction), against
  ``bench.peer_tasks.floor_app``'s enqueue: one ``LocalTransport.enqueue_many`` of a ready request,
  the transport call a deferred call ends in with none of our code before it;
- **push**: each task the deferred calls queued, leased from the local queue as the dispatcher
  leases it and handed to the app as gunicorn would (a WSGI environ with the dispatcher's headers,
  signature and queue headers included), against the floor's bare WSGI app given the floor's own
  pushes. Both bodies run one ``INCR`` on the same redis-server.

CPU is the process's (``time.process_time``) over ``--tasks`` calls, and for a push the
redis-server's too (read from ``/proc``, as ``bench.peers`` counts a system's CPU): the body's whole
cost is in both figures of a pair. The four measurements
alternate over ``--rounds`` rounds and the medians count; each figure prints min / median / max.
The environs are built before the clock starts: what is timed is what the server hands the app.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The Redis client alone (deploy/bench-setup.sh), for the task body in this interpreter.
OURS_SITE = ROOT / ".venv-bench" / "ours"
QUEUE = "default"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Spread:
    """Microseconds per task of one measurement, one value per round."""

    values: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        return f"{min(self.values):.0f} / {self.median:.0f} / {max(self.values):.0f} µs"


@dataclasses.dataclass
class CostFigures:
    push: Spread
    bare: Spread
    enqueue: Spread
    transport: Spread

    def line(self) -> str:
        return (f"push_us/bare_us={self.push.median / self.bare.median:.2f} "
                f"enqueue_us/bare_us={self.enqueue.median / self.transport.median:.2f}")


def environ_for(task: Any, *, host: str = "127.0.0.1") -> dict[str, Any]:
    """The WSGI environ of the dispatcher's push of a leased ``task``, as a server parses it."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": task.method, "SCRIPT_NAME": "", "PATH_INFO": task.path, "QUERY_STRING": "",
        "SERVER_NAME": host, "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(task.body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(task.body)), "HTTP_HOST": f"{host}:8080", "HTTP_USER_AGENT": "AppEngine-Google",
        "HTTP_X_APPENGINE_QUEUENAME": QUEUE, "HTTP_X_APPENGINE_TASKNAME": task.name,
        "HTTP_X_APPENGINE_TASKRETRYCOUNT": str(task.retry_count),
        "HTTP_X_APPENGINE_TASKEXECUTIONCOUNT": str(task.execution_count),
        "HTTP_X_APPENGINE_TASKETA": f"{task.eta:.6f}", "bench.task_id": task.id,
    }
    for line in task.headers.split("\r\n"):
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value.strip()
    return environ


def call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> str:
    """One request through a WSGI app, as a server runs it: the status line it answered."""
    answered: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        answered.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answered[0]


def push_all(app: Callable[..., Iterable[bytes]], environs: list[dict[str, Any]], statuses: list[str]) -> None:
    statuses.extend(call(app, environ) for environ in environs)


def leased(store: Any, count: int) -> list[Any]:
    """Every task the store holds, leased as the dispatcher leases them (then left leased)."""
    tasks = store.lease_due(QUEUE, time.time() + 60, count)
    if len(tasks) != count:
        raise RuntimeError(f"{len(tasks)} tasks queued, {count} expected")
    return tasks


def process_cpu(pid: int) -> float:
    """User + system CPU seconds another process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_us(work: Callable[[], None], count: int, *, also: int | None = None) -> float:
    """CPU microseconds per call of this process running ``work``, plus process ``also``'s meanwhile."""
    before, other = time.process_time(), process_cpu(also) if also is not None else 0.0
    work()
    spent = time.process_time() - before + (process_cpu(also) - other if also is not None else 0.0)
    return spent / count * 1e6


@contextmanager
def apps(data: Path, redis_url: str, datastore_host: str) -> Iterator[tuple[Any, Any, Any]]:
    """``(ours_app module, floor_app module, ours' store)`` configured for this run's folder."""
    if str(OURS_SITE) not in sys.path:
        if not OURS_SITE.is_dir():
            raise SystemExit("the Redis client for the task body is missing: run deploy/bench-setup.sh")
        sys.path.append(str(OURS_SITE))
    os.environ.update({"BENCH_REDIS_URL": redis_url, "DATASTORE_EMULATOR_HOST": datastore_host,
                       "GOOGLE_CLOUD_PROJECT": "bench-project", "TASKS_BACKEND": "local",
                       "LOCAL_DATA_DIR": str(data), "TASKS_SECRET": "bench-secret", "SECRET_KEY": "bench-key"})
    from bench.peer_tasks import floor_app, ours_app
    from core.tasks.runtime import get_runtime

    with ours_app.app.app_context():
        yield ours_app, floor_app, get_runtime().transport.store


def measure(tasks: int, rounds: int, *, redis_url: str, redis_pid: int, datastore_host: str,
            data: Path) -> CostFigures:
    """The four measurements, alternating over ``rounds`` rounds of ``tasks`` calls each."""
    from core.tasks.transports.local.store import LocalQueueStore

    figures = CostFigures(Spread(), Spread(), Spread(), Spread())
    with apps(data, redis_url, datastore_host) as (ours, floor, store):
        floor_store = LocalQueueStore(data / "floor.sqlite3")
        from core.tasks.transports.local.transport import LocalTransport

        floor_transport = LocalTransport(floor_store)

        def floor_incr() -> None:
            floor_transport.enqueue_many([floor.TaskRequest(queue=QUEUE, path="/incr", body=floor.INCR_BODY,
                                                            headers=floor.HEADERS)])

        for _ in range(3):  # warm up: imports, connections, the first request's setup
            ours.incr()
            floor_incr()
        for task in leased(store, 3):
            call(ours.app, environ_for(task))
        for task in leased(floor_store, 3):
            call(floor.app, environ_for(task))
        for _ in range(rounds):
            figures.enqueue.values.append(cpu_us(lambda: [ours.incr() for _ in range(tasks)] and None, tasks))
            figures.transport.values.append(cpu_us(lambda: [floor_incr() for _ in range(tasks)] and None, tasks))
            ours_environs = [environ_for(task) for task in leased(store, tasks)]
            floor_environs = [environ_for(task) for task in leased(floor_store, tasks)]
            statuses: list[str] = []
            figures.push.values.append(cpu_us(partial(push_all, ours.app, ours_environs, statuses), tasks,
                                              also=redis_pid))
            figures.bare.values.append(cpu_us(partial(push_all, floor.app, floor_environs, statuses), tasks,
                                              also=redis_pid))
            refused = [status for status in statuses if not status.startswith("200")]
            if refused:
                raise RuntimeError(f"{len(refused)} pushes were not answered 200: {refused[:3]}")
            for queue_store, environs in ((store, ours_environs), (floor_store, floor_environs)):
                queue_store.record([e["bench.task_id"] for e in environs], [], [])  # done, as the dispatcher says
        floor_store.close()
    return figures


def report(figures: CostFigures, tasks: int, rounds: int) -> None:
    print(f"in process, {tasks} tasks a round, {rounds} alternating rounds, CPU min / median / max:")
    print(f"  deferred call   {figures.enqueue}   bare transport call {figures.transport}")
    print(f"  push            {figures.push}   bare WSGI app        {figures.bare}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from bench.peers import Redis
    from core.devserver.datastore_emulator import start_datastore_emulator

    tmp = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    datastore = start_datastore_emulator()
    redis = Redis(tmp / "redis")
    try:
        figures = measure(args.tasks, args.rounds, redis_url=redis.url, redis_pid=redis.process.pid,
                          datastore_host=datastore.host, data=tmp / "data")
    finally:
        redis.stop()
        datastore.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(figures, args.tasks, args.rounds)
    print(f"cost: {figures.line()} push_us={figures.push.median:.0f} bare_us={figures.bare.median:.0f} "
          f"enqueue_us={figures.enqueue.median:.0f} transport_us={figures.transport.median:.0f}")


if __name__ == "__main__":
    main()
