"""The plugin's queue: tasks run when due on the test clock, retries after their backoff, cron pings."""
from __future__ import annotations

import datetime

import pytest

from core.tasks import PeriodicTask, callDeferred
from core.testing import TaskFailed, TaskQueue

CALLS: list[str] = []
FAILURES: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    FAILURES.clear()


@callDeferred
def remember(label: str) -> None:
    CALLS.append(label)


@callDeferred
def fails_first(label: str, times: int) -> None:
    FAILURES[label] = FAILURES.get(label, 0) + 1
    if FAILURES[label] <= times:
        raise RuntimeError(f"failure {FAILURES[label]} of {label}")
    CALLS.append(label)


@PeriodicTask(cronName="plugin-test")
def on_cron() -> None:
    CALLS.append("cron")


@pytest.fixture
def queue(make_app, settings, tmp_path) -> TaskQueue:
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: slow-retries\n  retry_parameters:\n    task_retry_limit: 3\n"
                          "    min_backoff_seconds: 10\n    max_backoff_seconds: 100\n    max_doublings: 4\n")
    return TaskQueue(make_app({}, settings=settings.replace(queue_yaml=queue_yaml)))


def test_a_countdown_task_runs_only_once_the_clock_reaches_it(queue):
    remember("now")
    remember("later", _countdown=60)
    queue.run_pending()
    assert CALLS == ["now"] and len(queue.pending) == 1
    queue.advance(59)
    assert CALLS == ["now"]
    queue.advance(2)
    assert CALLS == ["now", "later"] and queue.pending == []


def test_a_countdown_made_after_advance_waits_its_whole_countdown(queue):
    queue.advance(3600)
    remember("later", _countdown=60)
    queue.run_pending()
    assert CALLS == [] and len(queue.pending) == 1
    queue.advance(59)
    assert CALLS == []
    queue.advance(2)
    assert CALLS == ["later"] and queue.pending == []


def test_an_eta_is_judged_on_the_app_clock_the_queue_advances(queue):
    queue.advance(40 * 24 * 3600)  # 40 days on: an eta an hour ahead of the app's now is not "over 30 days"
    start = queue.clock.now()
    remember("in an hour", _eta=start + datetime.timedelta(hours=1))
    with pytest.raises(ValueError, match="30 days ahead"):
        remember("too far", _eta=start + datetime.timedelta(days=31))
    queue.advance(3599)
    assert CALLS == []
    queue.advance(2)
    assert CALLS == ["in an hour"]


def test_run_pending_until_runs_eta_tasks_in_time_order(queue):
    start = queue.clock.now()
    remember("second", _eta=start + datetime.timedelta(hours=2))
    remember("first", _eta=start + datetime.timedelta(hours=1))
    queue.run_pending(until=start + datetime.timedelta(minutes=90))
    assert CALLS == ["first"]
    queue.run_pending(until=start + datetime.timedelta(hours=3))
    assert CALLS == ["first", "second"]
    assert queue.clock.now() >= start + datetime.timedelta(hours=3)


def test_a_failed_task_comes_back_after_its_queues_backoff(queue):
    fails_first("t", 2, _queue="slow-retries")
    queue.run_pending(raise_errors=False)
    assert FAILURES == {"t": 1} and len(queue.pending) == 1
    queue.advance(9)  # the first retry waits min_backoff_seconds = 10 s
    assert FAILURES == {"t": 1}
    queue.advance(2, raise_errors=False)
    assert FAILURES == {"t": 2}
    queue.advance(19)  # then the wait doubles: 20 s
    assert FAILURES == {"t": 2} and CALLS == []
    queue.advance(2)
    assert FAILURES == {"t": 3} and CALLS == ["t"] and queue.pending == []


def test_the_queues_retry_limit_drops_the_task(queue):
    fails_first("never", 99, _queue="slow-retries")
    queue.run_pending(until=queue.clock.now() + datetime.timedelta(hours=1), raise_errors=False)
    assert FAILURES == {"never": 4} and queue.pending == []  # task_retry_limit 3: four attempts in all


def test_a_failing_task_raises_in_the_test_and_stays_queued_for_its_retry(queue):
    fails_first("once", 1)
    with pytest.raises(TaskFailed, match="answered 5"):
        queue.run_pending()
    assert len(queue.pending) == 1
    queue.advance(1)
    assert CALLS == ["once"]


def test_max_attempts_retries_at_once(queue):
    fails_first("quick", 2, _queue="slow-retries")
    queue.run_pending(max_attempts=3)
    assert CALLS == ["quick"] and FAILURES == {"quick": 3}


def test_ping_cron_sends_a_signed_ping_that_runs_the_groups_tasks(queue):
    unsigned = queue.app.test_client().get("/_tasks/cron/plugin-test")
    assert unsigned.status_code == 403
    queue.run_pending()
    assert CALLS == []
    response = queue.ping_cron("plugin-test")
    assert response.status_code == 200 and CALLS == ["cron"]


def test_ping_cron_of_an_unknown_group_fails(queue):
    with pytest.raises(TaskFailed, match="404"):
        queue.ping_cron("no-such-group")
