"""``timeout=``: a queued task pushed again while its run is alive, or after it ran, does not run again."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.tasks import callDeferred, deadline, message
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.deadline import CLAIM_KIND, current_deadline

RUNS: list[datetime.datetime | None] = []


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


@callDeferred(timeout=20)
def bounded() -> None:
    RUNS.append(current_deadline())


def _claim_of(task) -> db.Key:
    return deadline.claim_key(message.decode(task.request.body), TaskInfo(queue=task.request.queue, task_name=task.id))


def test_a_push_while_the_run_is_alive_is_answered_409_and_one_after_it_ran_200(app, task_queue):
    bounded()
    (task,) = task_queue.pending
    assert deadline.claim(_claim_of(task)) == "run"  # another push of it is running right now
    (outcome,) = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert outcome.status == 409 and RUNS == [], "not run beside the live run"

    task_queue.clock.advance(deadline.CLAIM_STALE.total_seconds() + 1)  # that run's process died
    task_queue.pending.append(task)
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200 and len(RUNS) == 1
    assert RUNS[0] is not None and RUNS[0] > task_queue.clock.now(), "the task reads its deadline"
    assert current_deadline() is None, "only while it runs"

    task_queue.pending.append(task)  # the queue pushes it again: its deadline had passed
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200 and outcome.skipped and len(RUNS) == 1, "it ran before: not again"
    assert [c["done"] for c in db.Query(CLAIM_KIND).run()] == [True]
