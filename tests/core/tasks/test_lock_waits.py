"""Waiting for a lock is not failing: no attempt, no dead letter, no traceback; waiters spread out."""
from __future__ import annotations

import datetime
import logging

import pytest

from core import db
from core.tasks import callDeferred, lifecycle, records
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.lease import Lease

RUNS: list[int] = []


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


@callDeferred(lock="ledger", retry_on=(OSError,), max_attempts=2, track=True)
def post_entry(index: int) -> None:
    RUNS.append(index)


def test_lock_waits_are_never_attempts_failures_or_dead_letters(app, task_queue, caplog):
    holder = Lease("ledger", datetime.timedelta(minutes=10))
    assert holder.acquire()
    handles = [post_entry(i) for i in range(5)]
    caplog.set_level(logging.INFO, logger="core")
    for _ in range(6):  # a minute of waiting: past the queue's short retries, into the app's own
        task_queue.advance(10, raise_errors=False)
    assert RUNS == [] and db.Query(DEAD_LETTER_KIND).run() == []
    for handle in handles:
        record = handle.status()
        assert record.state is records.RETRYING and record.attempts == 0 and record.error is None
    waiting = [task for task in task_queue.pending if "-w" in (task.request.name or "")]
    assert len(waiting) == 5, "each waiter is sent again by the app"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a wait is no warning"
    assert not [r for r in caplog.records if r.exc_info], "and has no traceback"
    assert any("waits for its lock" in r.getMessage() for r in caplog.records)

    holder.release()
    task_queue.advance(30)
    assert sorted(RUNS) == [0, 1, 2, 3, 4]
    assert db.Query(DEAD_LETTER_KIND).run() == []
    for handle in handles:
        record = handle.status()
        assert record.state is records.SUCCEEDED and record.attempts == 1


def test_waiters_look_again_at_jittered_times_up_to_a_cap():
    first = [lifecycle.lock_wait_delay(0) for _ in range(200)]
    assert all(lifecycle.LOCK_WAIT_FIRST / 2 <= d <= lifecycle.LOCK_WAIT_FIRST for d in first)
    assert max(first) - min(first) > lifecycle.LOCK_WAIT_FIRST / 4, "spread out, not in lock-step"
    late = [lifecycle.lock_wait_delay(waits) for waits in range(4, 60)]
    assert all(lifecycle.LOCK_WAIT_CAP / 2 <= d <= lifecycle.LOCK_WAIT_CAP for d in late), "capped"
    assert len(set(late)) == len(late)
