"""Locked and singleton tasks through the in-process queue and the real handler."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.tasks import callDeferred
from core.tasks.errors import ConfigurationError, DeferredArgumentError, LockHeld
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.hooks import TaskHook
from core.tasks.lease import Lease, current_holder
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.periodic.kind import STATE_KIND, run_cron

RUNS: list[tuple] = []
SEEN_BY_HOOK: list[tuple] = []
MINUTE = datetime.timedelta(minutes=1)


class Watcher(TaskHook):
    def on_failure(self, task, error):
        SEEN_BY_HOOK.append(("on_failure", type(error).__name__))

    def after_run(self, task, outcome):
        SEEN_BY_HOOK.append(("after_run", outcome.status))


@callDeferred(lock="invoice-{invoice_key}", lock_lease=30, hooks=[Watcher()])
def recompute(invoice_key: db.Key, month: str = "2026-10") -> None:
    holder = current_holder(f"invoice-{invoice_key}")
    RUNS.append(("recompute", invoice_key.id_or_name, month, holder is not None))


@callDeferred(lock="invoice-{invoice_key}-{month}")
def with_default(invoice_key: db.Key, month: str = "2026-10") -> None:
    RUNS.append(("with_default", month))


@callDeferred(lock="export-{options[region]}")
def export(options: dict) -> None:
    RUNS.append(("export", options["region"]))


@callDeferred(lock=True)
def singleton() -> None:
    RUNS.append(("singleton", current_holder("tests.core.tasks.test_locks.singleton") is not None))
    raise RuntimeError("fails after taking the lock")


@PeriodicTask(cronName="t-locked", lock=True)
def locked_periodic() -> None:
    RUNS.append(("periodic",))


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()
    SEEN_BY_HOOK.clear()


def test_a_locked_task_waits_for_the_lock_and_runs_when_it_is_free(app, task_queue):
    key = db.key("invoice", 7)
    other = Lease(f"invoice-{key}", MINUTE)
    assert other.acquire()
    recompute(key)
    task = task_queue.pending[0]
    (outcome,) = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert outcome.status == 409 and isinstance(outcome.error, LockHeld)
    assert "is held by another run" in outcome.message
    assert RUNS == [] and db.Query(DEAD_LETTER_KIND).run() == [], "not run, not a dead letter"
    assert SEEN_BY_HOOK == [("after_run", 409)], "a held lock is not a failure of the task"
    other.release()
    task_queue.pending.append(task)  # the queue's retry
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200
    assert RUNS == [("recompute", 7, "2026-10", True)], "the lock is held while the task runs"
    assert current_holder(f"invoice-{key}") is None, "and released after it"


def test_a_lock_left_by_a_crashed_holder_is_free_once_its_lease_has_passed_on_the_app_clock(app, task_queue):
    key = db.key("invoice", 9)
    assert Lease(f"invoice-{key}", datetime.timedelta(seconds=30)).acquire()  # then its holder died
    recompute(key)
    task = task_queue.pending[0]
    task_queue.clock.advance(29)
    (outcome,) = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert outcome.status == 409 and RUNS == [], "the dead holder's lease still runs"
    task_queue.clock.advance(2)
    task_queue.pending.append(task)  # the queue's retry
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200 and RUNS == [("recompute", 9, "2026-10", True)], "its lease ran out: free"


def test_the_lock_is_per_argument_value_and_the_handler_answers_409(app, client, task_queue):
    Lease(f"invoice-{db.key('invoice', 1)}", MINUTE).acquire()
    recompute(db.key("invoice", 1))
    recompute(db.key("invoice", 2))
    held = task_queue.pending[0]
    outcomes = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert [o.status for o in outcomes] == [409, 200]
    assert RUNS == [("recompute", 2, "2026-10", True)]
    response = client.post(held.request.path, data=held.request.body, headers=task_queue.transport._headers(held))
    assert response.status_code == 409 and response.headers["X-Task-Outcome"] == "LockHeld"


def test_a_failing_locked_task_releases_its_lock(app, task_queue):
    singleton()
    (outcome,) = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert outcome.status == 500 and RUNS == [("singleton", True)]
    assert current_holder("tests.core.tasks.test_locks.singleton") is None


def test_templates_use_defaults_and_item_access(app, task_queue):
    with_default(db.key("invoice", 3))
    export({"region": "eu"})
    Lease("export-eu", MINUTE).acquire()
    outcomes = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert [o.status for o in outcomes] == [200, 409]
    assert RUNS == [("with_default", "2026-10")]


def test_a_template_the_arguments_cannot_fill_fails_at_the_call(app, task_queue):
    with pytest.raises(DeferredArgumentError, match=r"cannot defer .*export: its lock template 'export-\{options"):
        export({"no region": 1})
    with pytest.raises(DeferredArgumentError, match="cannot defer .*recompute: missing a required argument"):
        recompute()
    assert task_queue.pending == []


def test_bad_lock_options_fail_at_decoration():
    def target(invoice_key, month="x"):
        pass

    target.__qualname__ = "target"  # a module-level name, as tasks have
    with pytest.raises(ConfigurationError, match=r"names 'invoice', which is not a parameter .*invoice_key"):
        callDeferred(lock="invoice-{invoice}")(target)
    with pytest.raises(ConfigurationError, match="must name arguments"):
        callDeferred(lock="invoice-{0}")(target)
    with pytest.raises(ConfigurationError, match="is malformed"):
        callDeferred(lock="invoice-{invoice_key")(target)
    with pytest.raises(ConfigurationError, match="lock must be True or a non-empty name template"):
        callDeferred(lock=3)(target)
    with pytest.raises(ConfigurationError, match="lock_lease= needs lock="):
        callDeferred(lock_lease=5)(target)
    with pytest.raises(ConfigurationError, match="lock_lease must be a positive"):
        callDeferred(lock="x", lock_lease=0)(target)
    def no_arguments():
        pass

    no_arguments.__qualname__ = "no_arguments"
    with pytest.raises(ConfigurationError, match="lock must be True or False"):
        PeriodicTask(cronName="t-bad", lock="yes")(no_arguments)


def test_a_locked_periodic_run_is_retried_while_another_holds_its_lock(app, task_queue):
    runtime = app.extensions["core"]
    name = "tests.core.tasks.test_locks.locked_periodic"
    holder = Lease(f"periodic:{name}", MINUTE)
    assert holder.acquire()
    assert run_cron(runtime, "t-locked").enqueued == [name]
    task = task_queue.pending[0]
    (outcome,) = task_queue.run_pending(raise_errors=False, max_attempts=1)
    assert outcome.status == 409 and RUNS == []
    state = db.get(db.key(STATE_KIND, name))
    assert state["pending_generation"] is not None and not state.get("failures"), "still pending, no failure"
    assert run_cron(runtime, "t-locked").outcomes == {name: "pending"}, "no second run is claimed meanwhile"
    holder.release()
    task_queue.pending.append(task)
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200 and RUNS == [("periodic",)]
    assert db.get(db.key(STATE_KIND, name))["pending_generation"] is None
    assert current_holder(f"periodic:{name}") is None


def test_running_now_with_call_deferred_false_takes_the_same_lock(app, task_queue):
    key = db.key("invoice", 5)
    other = Lease(f"invoice-{key}", MINUTE)
    assert other.acquire()
    with pytest.raises(LockHeld, match=f"lock 'invoice-{key}' is held by another run"):
        recompute(key, _call_deferred=False)
    other.release()
    recompute(key, "2026-11", _call_deferred=False)
    assert RUNS == [("recompute", 5, "2026-11", True)] and task_queue.pending == []
