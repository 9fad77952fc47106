"""Deferred calls: end-to-end rate, the HTTP limit, the Cloud Tasks emulator, and enqueue cost.

Run: ``python -m bench.deferred`` (after ``deploy/setup.sh``). Prints its figures and, last:
``deferred: e2e/limit=<x> e2e/emulator=<y> enqueue100/sequential=<z> tracked/untracked=<t> app_cpu_us/task=<c>
tracked_rpcs=<enqueue>+<run> push_us/bare_us=<p> enqueue_us/bare_us=<q>`` (one line). Needs
``deploy/bench-setup.sh`` for (f).

(a) no-op deferred tasks per second end to end: queued by the app into the durable local queue,
    pushed by the dispatcher to gunicorn (2 threaded workers, as app.yaml runs it), verified,
    decoded and run by the handler; and the app's CPU time per task (user + system time of the
    gunicorn workers during the drain, divided by the tasks run): the cost a deployment pays per task;
(b) the limit: ``wrk`` on a bare no-op POST route of the same gunicorn, with as many connections as
    the dispatcher opens. (a) and (b) alternate over ``--e2e-rounds`` rounds and the medians count,
    so a neighbour's load on the machine moves both alike;
(c) gcloud-tasks-emulator's own push rate to a bare route of the same gunicorn;
(d) the time 100 deferred calls add to one request (Cloud Tasks transport against the emulator)
    vs. 100 sequential ``create_task`` calls against the same emulator;
(e) (a) again with tracked calls (a task record each), in the same rounds (its median counts: the
    first round also warms the Datastore emulator's JIT up, which untracked tasks never touch), and
    the Datastore RPCs per task, tracked and untracked, counted on the client of an in-process app;
(f) our own CPU per task in process (:mod:`bench.cost`): a push against a bare WSGI app running
    the same body, a deferred call against the bare transport call.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from core.devserver.datastore_emulator import start_datastore_emulator
from core.devserver.ports import free_port
from core.devserver.stack import LocalStack
from core.tasks.transports.local.store import LocalQueueStore
from tests.services.tasks_emulator import start_tasks_emulator

PROJECT, LOCATION = "bench-project", "europe-west1"
#: Connections the dispatcher may open, and wrk's for the limit: both push at the same concurrency.
CONNECTIONS = 64
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout: float, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval)
    return time.monotonic()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / _CLOCK_TICKS


def e2e_rate(stack: LocalStack, count: int, *, track: bool = False) -> tuple[float, float]:
    """Queue ``count`` no-op tasks with the dispatcher stopped, then time the drain.

    Returns tasks per second and the gunicorn workers' CPU microseconds per task during the drain.
    """
    stack.stop_dispatcher()
    session = requests.Session()
    per_request = min(count, 1000)
    for _ in range(count // per_request):
        session.get(f"{stack.url}/bench/defer",
                    params={"count": per_request, "track": int(track)}).raise_for_status()
    store = LocalQueueStore(stack.queue_db)
    queued = store.pending()  # a worker's first request may add this version's startup task
    assert count <= queued <= count + 2, (count, queued)
    workers = stack.worker_pids()
    cpu_before = cpu_seconds(workers)
    start = time.monotonic()
    stack.start_dispatcher()
    end = wait_until(lambda: store.pending() == 0, timeout=600)
    cpu_us = (cpu_seconds(workers) - cpu_before) / count * 1e6
    failed = store.counts()
    store.close()
    rate = count / (end - start)
    label = "(e) end to end, tracked" if track else "(a) end to end"
    print(f"{label}: {count} no-op tasks in {end - start:.2f} s = {rate:.0f} tasks/s, "
          f"app CPU {cpu_us:.0f} µs/task  [{failed}]")
    return rate, cpu_us


def rpcs_per_task(datastore, tmp: Path, calls: int = 20) -> dict[str, tuple[float, float]]:
    """Datastore RPCs per deferred call (enqueue, execution), untracked and tracked, in process."""
    from core import create_app
    from core.config import Settings
    from example.invoices import noop
    from tests.services.datastore_rpcs import RpcCounter

    settings = Settings(project=PROJECT, datastore_emulator_host=datastore.host, tasks_backend="inline",
                        tasks_secret="bench-secret", secret_key="bench-key", local_data_dir=tmp / "rpcs")
    app = create_app({}, settings=settings, startup_tasks=False)
    transport = app.extensions["core"].transport
    figures = {}
    with app.app_context(), RpcCounter().counting() as rpcs:
        for label, track in (("untracked", False), ("tracked", True)):
            rpcs.take()
            for i in range(calls):
                noop(i, _track=track)
            enqueue = rpcs.take() / calls
            transport.run_pending(app)
            figures[label] = (enqueue, rpcs.take() / calls)
    print(f"(e) Datastore RPCs per task (enqueue, execution): untracked {figures['untracked']}, "
          f"tracked {figures['tracked']}")
    return figures


def wrk_rate(url: str, seconds: int, connections: int = CONNECTIONS) -> float:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing: run deploy/setup.sh (Debian package wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.body = ""\n')
    output = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
                            capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    print(f"(b) limit: wrk -t2 -c{connections} on a bare no-op POST route: {rate:.0f} req/s"
          + (f" ({errors.group(1)} non-2xx!)" if errors else ""))
    return rate


def emulator_push_rate(stack: LocalStack, counter: Path, count: int) -> float:
    """Create ``count`` tasks due in a few seconds, then time the emulator pushing them."""
    from google.cloud import tasks_v2

    with start_tasks_emulator(target_port=stack.port, queues=["push"], max_retries=0, project=PROJECT,
                              location=LOCATION) as emulator:
        client = _client(emulator.host)
        parent = emulator.queue_path("push")
        counter.write_bytes(b"")
        due = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=8)
        created = time.monotonic()
        for _ in range(count):
            client.create_task(parent=parent, task=tasks_v2.Task(
                app_engine_http_request=tasks_v2.AppEngineHttpRequest(relative_uri="/bare/count"),
                schedule_time=due))
        if time.monotonic() - created > 7.5:
            print("    (creating took longer than the delay: pushes overlapped creation)")
        wait_until(lambda: counter.stat().st_size > 0, timeout=60, interval=0.005)
        start = time.monotonic()
        end = wait_until(lambda: counter.stat().st_size >= count, timeout=300)
    rate = count / (end - start)
    print(f"(c) gcloud-tasks-emulator pushing {count} tasks to a bare route: {rate:.0f} tasks/s")
    return rate


def _client(host: str):
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(host)))


def enqueue_cost(datastore, tmp: Path, rounds: int) -> tuple[float, float]:
    """Median extra time of a request deferring 100 calls vs. 100 sequential create_task calls."""
    from google.cloud import tasks_v2

    stack = LocalStack(data_dir=tmp / "cloudtasks", datastore=datastore, persist=False, cron=False)
    stack.port = stack.port or free_port()
    with start_tasks_emulator(target_port=stack.port, queues=["default"], max_retries=0, project=PROJECT,
                              location=LOCATION) as emulator:
        stack.extra_env = {"TASKS_BACKEND": "cloudtasks", "TASKS_EMULATOR": emulator.host,
                           "GOOGLE_CLOUD_PROJECT": PROJECT, "TASKS_REGION": LOCATION}
        stack.app_module = "bench.app:app"
        with stack:
            session = requests.Session()
            client = _client(emulator.host)
            parent = emulator.queue_path("default")
            for _ in range(3):  # warm both paths up (connections, clients, imports)
                session.get(f"{stack.url}/bench/defer", params={"count": 100}).raise_for_status()
                session.get(f"{stack.url}/bench/defer", params={"count": 0}).raise_for_status()
            added, sequential = [], []
            task = tasks_v2.Task(app_engine_http_request=tasks_v2.AppEngineHttpRequest(relative_uri="/bare/noop"))
            for _ in range(rounds):
                t0 = time.perf_counter()
                session.get(f"{stack.url}/bench/defer", params={"count": 0}).raise_for_status()
                t1 = time.perf_counter()
                session.get(f"{stack.url}/bench/defer", params={"count": 100}).raise_for_status()
                t2 = time.perf_counter()
                for _ in range(100):
                    client.create_task(parent=parent, task=task)
                t3 = time.perf_counter()
                added.append((t2 - t1) - (t1 - t0))
                sequential.append(t3 - t2)
                time.sleep(0.2)
    a, s = statistics.median(added), statistics.median(sequential)
    print(f"(d) 100 deferred calls add {a * 1000:.1f} ms to one request (median of {rounds}); "
          f"100 sequential create_task calls take {s * 1000:.1f} ms")
    return a, s


def own_cost(tasks: int, rounds: int) -> str:
    """(f): :mod:`bench.cost` in a process of its own (this one's threads from (a)-(e) would count in
    its CPU figures), with its own Datastore emulator and redis-server; returns its two ratios."""
    output = subprocess.run([sys.executable, "-m", "bench.cost", "--tasks", str(tasks), "--rounds", str(rounds)],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent
                            ).stdout.strip().splitlines()
    print("(f) our own CPU per task, " + "\n".join(output[:-1]))
    return " ".join(output[-1].split()[1:3])  # push_us/bare_us=<p> enqueue_us/bare_us=<q>


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--wrk-seconds", type=int, default=8)
    parser.add_argument("--emulator-tasks", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--e2e-rounds", type=int, default=3,
                        help="rounds of (b) then (a), alternating; their medians give e2e/limit")
    parser.add_argument("--cost-tasks", type=int, default=2000, help="calls a round of (f)")
    parser.add_argument("--cost-rounds", type=int, default=5, help="alternating rounds of (f)")
    parser.add_argument("--worker-class", default="gthread", choices=("gthread", "sync"),
                        help="gunicorn workers for (a)-(c): threaded as app.yaml runs them, or sync")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-deferred-"))
    datastore = start_datastore_emulator()
    try:
        counter = tmp / "count"
        stack = LocalStack(data_dir=tmp / "local", datastore=datastore, persist=False, cron=False,
                           app_module="bench.app:app", extra_env={"BENCH_COUNTER_FILE": str(counter)},
                           dispatcher_args=("--no-rate-limits", "--max-connections", str(CONNECTIONS)),
                           worker_class=args.worker_class,
                           threads=4 if args.worker_class == "gthread" else 1)
        with stack:
            print(f"gunicorn: {stack.workers} {stack.worker_class} workers x {stack.threads} threads on {stack.url}; "
                  f"Python {sys.version.split()[0]}")
            limits, rates, cpus, tracked_rates = [], [], [], []
            for _ in range(args.e2e_rounds):
                limits.append(wrk_rate(f"{stack.url}/bare/noop", args.wrk_seconds))
                rate, cpu_us = e2e_rate(stack, args.tasks)
                rates.append(rate)
                cpus.append(cpu_us)
                tracked_rates.append(e2e_rate(stack, args.tasks, track=True)[0])
            limit, e2e, cpu_per_task = statistics.median(limits), statistics.median(rates), statistics.median(cpus)
            tracked = statistics.median(tracked_rates)
            print(f"    medians of {args.e2e_rounds} alternating rounds: limit {limit:.0f} req/s, "
                  f"end to end {e2e:.0f} tasks/s, app CPU {cpu_per_task:.0f} µs/task, tracked {tracked:.0f} tasks/s")
            emulator = emulator_push_rate(stack, counter, args.emulator_tasks)
        added, sequential = enqueue_cost(datastore, tmp, args.rounds)
        tracked_enqueue, tracked_run = rpcs_per_task(datastore, tmp)["tracked"]
    finally:
        datastore.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    own = own_cost(args.cost_tasks, args.cost_rounds)
    print(f"deferred: e2e/limit={e2e / limit:.2f} e2e/emulator={e2e / emulator:.2f} "
          f"enqueue100/sequential={added / sequential:.2f} tracked/untracked={tracked / e2e:.2f} "
          f"app_cpu_us/task={cpu_per_task:.0f} tracked_rpcs={tracked_enqueue:g}+{tracked_run:g} {own}")


if __name__ == "__main__":
    main()
