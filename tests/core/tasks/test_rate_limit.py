"""Global rate limits through the in-process queue, the real handler and the Datastore emulator, on the test clock."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.clock import utc_now
from core.tasks import callDeferred, noRetry
from core.tasks.errors import ConfigurationError
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.records import TaskRecord
from core.testing import TaskQueue, TestClock
from tests.services.datastore_rpcs import RpcCounter

STARTS: list[tuple] = []


@callDeferred(rate_limit="5/s")
def call_provider(n: int) -> None:
    STARTS.append((n, utc_now()))


@callDeferred(rate_limit="1/m", rate_key="customer-{customer_id}", track=True)
def monthly_report(customer_id: int, n: int) -> None:
    STARTS.append((customer_id, n, utc_now()))


@noRetry
@callDeferred(rate_limit="2/s")
def only_once(n: int) -> None:
    STARTS.append((n, utc_now()))


@callDeferred(rate_limit="1000/s")
def roomy(n: int) -> None:
    STARTS.append((n, utc_now()))


@callDeferred(rate_limit="1/s", max_attempts=2)
def flaky(n: int) -> None:
    if n == 1 and not any(start[0] == "failed" for start in STARTS):
        STARTS.append(("failed", utc_now()))
        raise RuntimeError("fails on its first attempt")
    STARTS.append((n, utc_now()))


@callDeferred
def unlimited(n: int) -> None:
    STARTS.append((n, utc_now()))


@pytest.fixture(autouse=True)
def _clear():
    STARTS.clear()


@pytest.fixture
def task_queue(app):
    """The app's queue on a clock that moves only when the test advances it."""
    return TaskQueue(app, clock=TestClock(start=datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.UTC)))


def most_in_any_window(times: list[datetime.datetime], seconds: float) -> int:
    """The most starts in any window of ``seconds`` (sliding: one starting at each start)."""
    window = datetime.timedelta(seconds=seconds)
    return max(sum(start <= t < start + window for t in times) for start in times)


def test_tasks_over_the_limit_wait_and_all_run_never_more_than_the_limit_in_any_window(app, task_queue):
    for n in range(23):
        call_provider(n)
    outcomes = task_queue.run_pending()
    assert len(STARTS) == 5, "the first second admits five"
    outcomes += task_queue.advance(120)
    assert sorted(n for n, _ in STARTS) == list(range(23)), "every task ran, once"
    assert most_in_any_window([t for _, t in STARTS], 1) == 5
    waits = [o for o in outcomes if o.skipped is not None]
    assert waits and all(o.status == 200 and o.error is None for o in waits), "a wait is answered 200, not failed"
    assert db.Query(DEAD_LETTER_KIND).run() == []


def test_the_key_template_limits_each_customer_apart_and_a_wait_is_not_an_attempt(app, task_queue):
    monthly_report(1, 1)
    waiting = monthly_report(1, 2)
    monthly_report(2, 1)
    task_queue.run_pending()
    assert sorted((c, n) for c, n, _ in STARTS) == [(1, 1), (2, 1)], "one per customer in the first minute"
    assert TaskRecord.fetch(waiting.id).state == "queued"
    task_queue.advance(200)
    assert sorted((c, n) for c, n, _ in STARTS) == [(1, 1), (1, 2), (2, 1)]
    first, second = sorted(t for c, _, t in STARTS if c == 1)
    assert second - first >= datetime.timedelta(minutes=1)
    record = TaskRecord.fetch(waiting.id)
    assert record.state == "succeeded" and record.attempts == 1, "waiting cost no attempt"


def test_a_task_that_may_run_only_once_still_runs_after_waiting(app, task_queue):
    for n in range(6):
        only_once(n)
    task_queue.run_pending()
    task_queue.advance(60)
    assert sorted(n for n, _ in STARTS) == list(range(6))
    assert most_in_any_window([t for _, t in STARTS], 1) == 2
    assert db.Query(DEAD_LETTER_KIND).run() == []


def test_a_task_that_waited_still_has_all_its_attempts(app, task_queue):
    flaky(0)
    flaky(1)
    task_queue.run_pending()
    assert [n for n, _ in STARTS] == [0], "the second waits for the next second"
    outcomes = task_queue.advance(60, raise_errors=False)
    assert [n for n, _ in STARTS] == [0, "failed", 1], "its first attempt failed, its second (of two) ran"
    assert [o.status for o in outcomes if o.skipped is None] == [500, 200]
    assert db.Query(DEAD_LETTER_KIND).run() == []


def test_what_an_admitted_task_costs_in_datastore_rpcs(app, task_queue, capsys):
    with RpcCounter().counting() as rpcs:
        unlimited(1)
        roomy(1)
        rpcs.take()
        task_queue.run_pending()
        both = rpcs.take()
    with capsys.disabled():
        print(f"\nDatastore RPCs of a rate-limited task admitted on its first shard: {both}")
    assert both == 2, "one transaction: the lookup that begins it and the commit"


def undecorated(customer_id: int) -> None: ...


def test_bad_rate_options_fail_at_decoration(app):
    with pytest.raises(ConfigurationError, match="rate_limit must be 'N/s', 'N/m' or 'N/h'"):
        callDeferred(rate_limit="10/d")(undecorated)
    with pytest.raises(ConfigurationError, match="rate_limit must be"):
        callDeferred(rate_limit="0/s")(undecorated)
    with pytest.raises(ConfigurationError, match="rate_key= needs rate_limit="):
        callDeferred(rate_key="c-{customer_id}")(undecorated)
    with pytest.raises(ConfigurationError, match="rate_key template 'c-{nope}' names 'nope'"):
        callDeferred(rate_limit="1/s", rate_key="c-{nope}")(undecorated)
