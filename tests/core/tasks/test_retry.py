"""Per-task retry policies, queue limits and dead letters, on the app's test clock, through the real handler."""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from core import db
from core.admin.dashboard import discard_dead_letter, retry_dead_letter
from core.tasks import Constant, Exponential, Linear, TaskFailed, callDeferred
from core.tasks import records as records_module
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.message import PAYLOAD_KIND
from core.tasks.retry import RetryPolicy
from core.tasks.runtime import get_runtime
from core.testing import TestClock
from tests.conftest import TaskQueue

START = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
ATTEMPTS: list[tuple[str, datetime.datetime]] = []


@pytest.fixture
def clock(app) -> TestClock:
    """The app's clock, standing at START: it moves only when the queue advances it, so waits are exact."""
    return TaskQueue(app, clock=TestClock(start=START)).clock


@pytest.fixture(autouse=True)
def _reset():
    ATTEMPTS.clear()


def _note(name: str) -> None:
    ATTEMPTS.append((name, get_runtime().clock.now()))


@callDeferred(track=True, max_attempts=5, retry_on=(IOError,), backoff=Exponential(base=2, max=600))
def exponential_io() -> None:
    _note("exp")
    raise OSError("disk busy")


@callDeferred(max_attempts=4, backoff=Constant(30))
def constant_untracked() -> None:
    _note("const")
    raise RuntimeError("nope")


@callDeferred(track=True, max_attempts=4, backoff=Linear(start=10, step=5, max=18))
def linear_then_ok() -> str:
    _note("linear")
    if len(ATTEMPTS) < 3:
        raise RuntimeError("not yet")
    return "third time"


@callDeferred(track=True, max_attempts=5, retry_on=(IOError,), backoff=Constant(1))
def wrong_error() -> None:
    _note("wrong")
    raise ValueError("a bug, not an outage")


@callDeferred(track=True, max_attempts=3)
def queue_paced() -> None:
    _note("queue")
    raise RuntimeError("again")


@callDeferred(track=True, queue="limited")
def always_fails() -> None:
    _note("limited")
    raise RuntimeError("always")


@callDeferred(queue="aged")
def fails_on_aged_queue() -> None:
    _note("aged")
    raise RuntimeError("old")


@callDeferred(timeout=45)
def with_timeout() -> None:
    _note("timeout")


@callDeferred(max_attempts=3, backoff=Constant(7))
def constant_seven() -> None:
    _note("constant")
    raise RuntimeError("again")


@callDeferred(track=True, max_attempts=4, backoff=Linear(start=5, step=10, max=20))
def linear_to_twenty() -> None:
    _note("linear")
    raise RuntimeError("again")


@callDeferred(max_attempts=4, backoff=Exponential(base=3, first=2, max=30))
def exponential_to_thirty() -> None:
    _note("exponential")
    raise RuntimeError("again")


def _drain_on_clock(task_queue, clock: TestClock, limit: int = 20) -> list:
    """Run queued tasks one by one, the app's clock advanced to each one's schedule time first."""
    return task_queue.run_pending(until=clock.now() + datetime.timedelta(days=1), raise_errors=False,
                                  max_tasks=limit)


def _gaps() -> list[float]:
    times = [t for _, t in ATTEMPTS]
    return [(b - a).total_seconds() for a, b in zip(times, times[1:])]


def test_policies_compute_their_waits():
    assert [Exponential(base=2, max=600).delay(n) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert [Linear(start=10, step=5, max=18).delay(n) for n in (1, 2, 3)] == [10, 15, 18]
    assert Constant(30).delay(7) == 30
    assert Exponential(base=3, first=0.5).delay(3) == 4.5
    with pytest.raises(ValueError):
        Exponential(base=0.5)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy.build("f", max_attempts=0)
    with pytest.raises(ValueError, match="retry_on"):
        RetryPolicy.build("f", retry_on=("IOError",))


def never_registered() -> None:
    """A plain function the bad declarations below fail on."""


def test_bad_policy_fails_where_the_function_is_declared():
    with pytest.raises(ValueError, match="test_retry.never_registered: backoff"):
        callDeferred(backoff=5)(never_registered)
    with pytest.raises(ValueError, match="timeout"):
        callDeferred(timeout=-1)(never_registered)


def test_exponential_backoff_spaces_attempts_and_ends_in_one_dead_letter(app, task_queue, clock):
    handle = exponential_io()
    outcomes = _drain_on_clock(task_queue, clock)
    assert [name for name, _ in ATTEMPTS] == ["exp"] * 5
    assert _gaps() == [1, 2, 4, 8]
    assert all(o.status == 200 for o in outcomes)  # every transport sees 2xx; the handler paces the retries
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1 and letters[0]["attempts"] == 5 and "OSError" in letters[0]["error"]
    status = handle.status()
    assert status.state == "failed" and status.attempts == 5
    assert len(db.Query(records_module.RECORD_KIND).run()) == 1  # one record across five queue tasks
    with pytest.raises(TaskFailed) as caught:
        handle.result(timeout=1)
    assert caught.value.error_type == "OSError"


def test_constant_backoff_holds_for_untracked_tasks(app, task_queue, clock):
    constant_untracked()
    _drain_on_clock(task_queue, clock)
    assert _gaps() == [30, 30, 30]
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1
    assert db.Query(records_module.RECORD_KIND).run() == []


def test_linear_backoff_until_success_keeps_one_record(app, task_queue, clock):
    handle = linear_then_ok()
    _drain_on_clock(task_queue, clock)
    assert _gaps() == [10, 15]
    assert handle.result(timeout=1) == "third time" and handle.status().attempts == 3
    assert db.Query(DEAD_LETTER_KIND).run() == []


def test_an_error_outside_retry_on_goes_straight_to_a_dead_letter(app, task_queue, clock):
    handle = wrong_error()
    _drain_on_clock(task_queue, clock)
    assert len(ATTEMPTS) == 1
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1 and "does not retry" in letters[0]["error"] and "ValueError" in letters[0]["error"]
    assert handle.status().state == "failed"


def test_max_attempts_without_backoff_leaves_pacing_to_the_queue(app, task_queue, clock):
    queue_paced()
    outcomes = task_queue.run_pending(raise_errors=False, max_attempts=10)
    assert len(ATTEMPTS) == 3
    assert [o.status for o in outcomes] == [500, 500, 200]
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1


@pytest.fixture
def limited_app(make_app, settings, tmp_path: Path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: limited\n  retry_parameters:\n    task_retry_limit: 2\n"
                          "- name: aged\n  retry_parameters:\n    task_age_limit: 1h\n")
    return make_app(settings=settings.replace(queue_yaml=queue_yaml, tasks_payload_limit=2_000))


def test_queue_retry_limit_2_means_three_attempts_then_one_dead_letter(limited_app):
    queue = TaskQueue(limited_app)
    handle = always_fails()
    outcomes = queue.run_pending(raise_errors=False, max_attempts=10)
    assert len(ATTEMPTS) == 3
    assert [o.status for o in outcomes] == [500, 500, 200]
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1 and letters[0]["attempts"] == 3 and "limit of queue 'limited'" in letters[0]["error"]
    assert handle.status().state == "failed"


def test_queue_age_limit_ends_a_task_older_than_it(limited_app):
    queue = TaskQueue(limited_app)
    fails_on_aged_queue()
    queue.run_pending(raise_errors=False, max_attempts=2)
    assert len(ATTEMPTS) == 2 and db.Query(DEAD_LETTER_KIND).run() == []
    fails_on_aged_queue()
    queue.clock.advance(2 * 3600)
    queue.run_pending(raise_errors=False, max_attempts=5)
    assert len(ATTEMPTS) == 3  # older than the queue's age limit: its first failure is its last
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1


def test_a_large_payload_is_deleted_when_its_dead_letter_is_discarded(limited_app):
    queue = TaskQueue(limited_app)
    always_fails_big("x" * 10_000)
    queue.run_pending(raise_errors=False, max_attempts=10)
    assert len(db.Query(PAYLOAD_KIND).run()) == 1  # kept while its dead letter exists
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert discard_dead_letter(letter.key)
    assert db.Query(PAYLOAD_KIND).run() == []


@callDeferred(queue="limited")
def always_fails_big(text: str) -> None:
    raise RuntimeError(f"always, with {len(text)} characters")


def test_timeout_sets_the_dispatch_deadline(app, task_queue):
    with_timeout()
    request = task_queue.pending[0].request
    assert request.dispatch_deadline == datetime.timedelta(seconds=45)


FIXED: list[bool] = []


@callDeferred(track=True, max_attempts=1)
def works_once_fixed() -> str:
    _note("fixable")
    if not FIXED:
        raise RuntimeError("not fixed yet")
    return "fixed"


def test_retrying_the_dead_letter_of_a_tracked_task_runs_it_again(app, task_queue, clock):
    FIXED.clear()
    handle = works_once_fixed()
    task_queue.run_pending(raise_errors=False)
    assert handle.status().state == "failed"
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    FIXED.append(True)
    assert retry_dead_letter(get_runtime(), letter.key)
    task_queue.run_pending()
    assert len(ATTEMPTS) == 2 and handle.result(timeout=1) == "fixed"


@pytest.mark.parametrize(("task", "waits"), [
    (constant_seven, [7, 7]),
    (linear_to_twenty, [5, 15, 20]),
    (exponential_to_thirty, [2, 6, 18]),
])
def test_advance_drives_every_backoff_policys_waits_exactly(app, task_queue, clock, task, waits):
    task_queue.advance(3600)  # an app an hour into the test: its waits still start from its own now
    task()
    task_queue.run_pending(raise_errors=False)
    assert len(ATTEMPTS) == 1
    for attempts, wait in enumerate(waits, start=1):
        task_queue.advance(wait - 0.001, raise_errors=False)
        assert len(ATTEMPTS) == attempts, f"attempt {attempts + 1} ran before its wait of {wait} s"
        task_queue.advance(0.001, raise_errors=False)
        assert len(ATTEMPTS) == attempts + 1, f"attempt {attempts + 1} did not run after its wait of {wait} s"
    assert _gaps() == waits
    assert task_queue.pending == [] and len(db.Query(DEAD_LETTER_KIND).run()) == 1
