"""One system's side of ``bench.peers``: enqueue through its own API and watch its tasks in Redis.

Run by ``bench.peers`` with the system's interpreter (``.venv`` for ours, ``.venv-bench`` for the
peers): ``python -m bench.peers_driver SYSTEM MODE COUNT``. Prints one JSON object, last:

- ``warm``: enqueue COUNT tasks and wait for them (workers up, connections open), then reset;
- ``e2e``: enqueue COUNT tasks with the workers running, time until the counter reaches COUNT
  (``start`` is printed first, once the enqueuer is ready);
- ``drain``: enqueue COUNT tasks with the workers stopped, print ``filled``, then time the
  workers (started by the caller) from the first task seen to the last;
- ``latency``: one task every ``--interval`` s, then the delays from each enqueue call to its body.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.peer_tasks import COUNTER_KEY, LATENCY_KEY, connect

#: The systems of ``bench.peers``, and its floor (ours' HTTP path and the task body alone).
SYSTEMS = ("ours", "celery", "dramatiq", "rq", "floor")
#: How often the counter is read while waiting (also the resolution of the end time).
POLL = 0.005


@contextlib.contextmanager
def enqueuers(system: str) -> Iterator[tuple[Callable[[], Any], Callable[[float], Any]]]:
    """``(incr, stamp)``: enqueue one task of each kind through the system's ordinary call."""
    if system == "ours":
        from bench.peer_tasks import ours_app

        with ours_app.app.app_context():  # outside a request a deferred call is queued at once
            yield ours_app.incr, ours_app.stamp
    elif system == "celery":
        from bench.peer_tasks import celery_app

        yield celery_app.incr.delay, celery_app.stamp.delay
    elif system == "dramatiq":
        from bench.peer_tasks import dramatiq_actors

        yield dramatiq_actors.incr.send, dramatiq_actors.stamp.send
    elif system == "floor":
        from bench.peer_tasks import floor_app

        with floor_app.enqueuers() as pair:
            yield pair
    elif system == "rq":
        from rq import Queue

        from bench.peer_tasks import rq_jobs

        queue = Queue(connection=connect())
        yield (lambda: queue.enqueue(rq_jobs.incr)), (lambda enqueued: queue.enqueue(rq_jobs.stamp, enqueued))
    else:
        raise SystemExit(f"unknown system {system!r}; one of {', '.join(SYSTEMS)}")


def wait_count(client: Any, key: str, count: int, deadline: float, *, length: bool = False) -> int:
    """Poll ``key`` (a counter, or a list's length) until it reaches ``count``; its last value."""
    while True:
        value = int(client.llen(key) if length else client.get(key) or 0)
        if value >= count or time.monotonic() > deadline:
            return value
        time.sleep(POLL)


def run(system: str, mode: str, count: int, interval: float, timeout: float) -> dict[str, Any]:
    client = connect()
    client.delete(COUNTER_KEY, LATENCY_KEY)
    deadline = time.monotonic() + timeout
    with enqueuers(system) as (incr, stamp):
        if mode in ("warm", "e2e"):
            print("start", flush=True)  # the caller reads the workers' CPU from here
            start = time.monotonic()
            for _ in range(count):
                incr()
            enqueued = time.monotonic()
            done = wait_count(client, COUNTER_KEY, count, deadline)
            end = time.monotonic()
            if mode == "warm":
                client.delete(COUNTER_KEY)
            if done < count:
                return {"error": f"{done} of {count} tasks ran within {timeout:.0f} s"}
            return {"rate": count / (end - start), "enqueue_rate": count / (enqueued - start)}
        if mode == "drain":
            for _ in range(count):
                incr()
            print("filled", flush=True)
            first = wait_count(client, COUNTER_KEY, 1, deadline)
            start = time.monotonic()
            done = wait_count(client, COUNTER_KEY, count, deadline)
            end = time.monotonic()
            if done < count:
                return {"error": f"{done} of {count} queued tasks ran within {timeout:.0f} s"}
            return {"rate": (count - first) / (end - start)}
        if mode == "latency":
            start = time.monotonic()
            for i in range(count):
                time.sleep(max(0.0, start + i * interval - time.monotonic()))
                stamp(time.time())
            done = wait_count(client, LATENCY_KEY, count, deadline, length=True)
            if done < count:
                return {"error": f"{done} of {count} latency tasks ran within {timeout:.0f} s"}
            pairs = [entry.split() for entry in client.lrange(LATENCY_KEY, 0, -1)]
            return {"latencies_ms": [(float(body) - float(sent)) * 1000 for sent, body in pairs]}
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("mode", choices=("warm", "e2e", "drain", "latency"))
    parser.add_argument("count", type=int)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    result = run(args.system, args.mode, args.count, args.interval, args.timeout)
    print(json.dumps(result), flush=True)
    sys.exit(1 if "error" in result else 0)


if __name__ == "__main__":
    main()
