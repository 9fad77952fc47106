"""Dead letters: a retried one gets the task's whole retry budget again, tracked or not."""
from __future__ import annotations

import pytest

from core import db
from core.tasks import Constant, callDeferred, deadletters
from core.tasks.records import RECORD_KIND
from core.tasks.runtime import get_runtime

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


@callDeferred(track=True, max_attempts=3)
def tracked_failing() -> None:
    RUNS.append("tracked")
    raise RuntimeError("still broken")


@callDeferred(max_attempts=3)
def untracked_failing() -> None:
    RUNS.append("untracked")
    raise RuntimeError("still broken")


@callDeferred(track=True, max_attempts=3, backoff=Constant(1))
def tracked_backing_off() -> None:
    RUNS.append("tracked, backing off")
    raise RuntimeError("still broken")


@callDeferred(max_attempts=3, backoff=Constant(1))
def untracked_backing_off() -> None:
    RUNS.append("untracked, backing off")
    raise RuntimeError("still broken")


def _drain(task_queue) -> None:
    """Run until nothing is left: queue-paced retries at once, self-scheduled ones as the clock moves."""
    for _ in range(10):
        task_queue.run_pending(raise_errors=False, max_attempts=10)
        task_queue.advance(5, raise_errors=False, max_attempts=10)
        if not task_queue.pending:
            return
    raise AssertionError("tasks still pending")


@pytest.mark.parametrize("func", [tracked_failing, untracked_failing, tracked_backing_off, untracked_backing_off],
                         ids=lambda f: f.target.name.rsplit(".", 1)[-1])
def test_a_retried_dead_letter_runs_its_whole_budget_again(app, task_queue, func):
    handle = func()
    _drain(task_queue)
    assert len(RUNS) == 3
    (letter,) = db.Query(deadletters.DEAD_LETTER_KIND).run()
    assert letter["attempts"] == 3

    assert deadletters.retry(get_runtime(), letter.key)
    assert db.Query(deadletters.DEAD_LETTER_KIND).run() == []
    _drain(task_queue)
    assert len(RUNS) == 6, "three more attempts, as max_attempts=3 allows"
    (again,) = db.Query(deadletters.DEAD_LETTER_KIND).run()
    assert again["attempts"] == 3 and "attempt 3 of 3" in again["error"]
    if handle.tracked:
        status = handle.status()
        assert status.state == "failed" and status.attempts == 3
    else:
        assert db.Query(RECORD_KIND).run() == []


def test_a_dead_letter_is_retried_once_and_discarded_once(app, task_queue):
    untracked_failing()
    _drain(task_queue)
    (letter,) = db.Query(deadletters.DEAD_LETTER_KIND).run()
    assert deadletters.count() == 1
    assert [row["id"] for row in deadletters.latest(limit=5)] == [str(letter.key.id)]
    assert deadletters.key_of(str(letter.key.id)) == letter.key
    assert deadletters.retry(get_runtime(), letter.key) and not deadletters.retry(get_runtime(), letter.key)
    assert len(task_queue.pending) == 1
    _drain(task_queue)
    (again,) = db.Query(deadletters.DEAD_LETTER_KIND).run()
    assert deadletters.discard(again.key) and not deadletters.discard(again.key)
    assert deadletters.count() == 0
