"""A global rate limit end to end: 1,000 tasks at ``rate_limit="20/s"`` over two queues, served by two
gunicorn workers (the local stack's default) and pushed by the durable local queue over HTTP.

Each run records when it started (its own ``time.time()``) in the Datastore emulator; the test
checks from outside that no 1 s window, sliding, holds more than 20 starts and that every task ran.
It takes at least 50 s (1,000 / 20) plus the stack's start.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks import callDeferred
from tests.e2e.conftest import wait_for

PROBE_APP = f"{__name__}:probe_app()"
RUN_KIND = "rate_run"
TASKS = 1_000
LIMIT = 20
QUEUES = ("rate-a", "rate-b")

QUEUE_YAML = """\
queue:
- name: default
  rate: 500/s
- name: rate-a
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 50
- name: rate-b
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 50
"""


# --- the probe app (runs inside gunicorn) ------------------------------------------------------

@callDeferred(rate_limit=f"{LIMIT}/s")
def limited(token: str, index: int) -> None:
    started = time.time()
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "index": index, "started": started})
    db.put(run)


class RateProbes(Module):
    @exposed(methods=("POST",))
    def start(self, token: str, first: str = "0", count: str = "1") -> str:
        for index in range(int(first), int(first) + int(count)):
            limited(token, index, _queue=QUEUES[index % len(QUEUES)])
        return "queued"


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probe."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "rateprobe": RateProbes}, users=SessionUsers(), languages=("en", "de"))


# --- the test --------------------------------------------------------------------------------------

def most_in_any_second(starts: list[float]) -> int:
    """The most starts in any 1 s window (sliding: one window opening at each start)."""
    starts = sorted(starts)
    most, low = 0, 0
    for high, moment in enumerate(starts):
        while starts[low] <= moment - 1.0:
            low += 1
        most = max(most, high - low + 1)
    return most


def test_a_thousand_tasks_at_twenty_a_second_over_two_workers_and_queues_never_exceed_it(make_stack, tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text(QUEUE_YAML)
    stack = make_stack(app_module=PROBE_APP, queue_yaml=queue_yaml)
    token = uuid.uuid4().hex
    for first in range(0, TASKS, 250):
        response = requests.post(f"{stack.url}/rateprobe/start", timeout=120,
                                 data={"token": token, "first": str(first), "count": "250"})
        assert response.status_code == 200, response.text

    def runs() -> list[db.Entity]:
        return db.Query(RUN_KIND).filter("token =", token).run()

    wait_for(lambda: len(runs()) >= TASKS, timeout=600, interval=2, message=f"all {TASKS} rate-limited tasks")
    done = runs()
    assert sorted({run["index"] for run in done}) == list(range(TASKS)), "every task ran"
    most = most_in_any_second([run["started"] for run in done])
    starts = sorted(run["started"] for run in done)
    print(f"\n{len(done)} runs over {starts[-1] - starts[0]:.1f} s; most starts in any 1 s window: {most}")
    assert most <= LIMIT
