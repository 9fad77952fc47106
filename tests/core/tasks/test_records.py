"""Task records and handles through the in-process queue and the real handler, on the emulator."""
from __future__ import annotations

import dataclasses
import datetime
import threading

import pytest

from core import db
from core.tasks import (
    PermanentTaskFailure,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    UntrackedTask,
    callDeferred,
    outbox,
    records,
)
from core.tasks import deferred as deferred_module
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.periodic.kind import install_builtins
from core.tasks.runtime import get_runtime

RUNS: list[str] = []
GATE = threading.Event()
STARTED = threading.Event()


@pytest.fixture(autouse=True)
def _reset():
    RUNS.clear()
    GATE.clear()
    STARTED.clear()


@callDeferred(track=True)
def add(a: int, b: int) -> dict:
    RUNS.append("add")
    return {"sum": a + b, "when": datetime.date(2026, 1, 2)}


@callDeferred
def untracked(tag: str) -> str:
    RUNS.append(tag)
    return tag


@callDeferred(track=True)
def broken() -> None:
    RUNS.append("broken")
    raise PermanentTaskFailure("cannot work: the input is gone")


@callDeferred(track=True)
def flaky_once(token: str) -> str:
    RUNS.append(token)
    if RUNS.count(token) == 1:
        raise RuntimeError("transient")
    return "ok"


@callDeferred(track=True)
def returns_unencodable() -> object:
    RUNS.append("unencodable")
    return object()


@callDeferred(track=True)
def waits_for_gate() -> str:
    RUNS.append("gate")
    STARTED.set()
    assert GATE.wait(30)
    return "finished"


def _state(handle: TaskHandle) -> str:
    return handle.status().state


def test_a_tracked_call_goes_from_queued_to_succeeded_with_its_result(app, task_queue):
    with app.test_request_context():
        handle = add(2, 3)
    assert handle.tracked and _state(handle) == "queued"
    record = records.get(handle.id)
    assert record["target"].endswith("test_records.add") and record["queue"] == "default"
    assert record["kind"] == "deferred" and record["attempts"] == 0 and record["enqueued_at"] is not None
    task_queue.run_pending()
    status = handle.status()
    assert status.state == "succeeded" and status.attempts == 1 and status.finished
    assert status.started_at <= status.ended_at
    assert handle.result(timeout=5) == {"sum": 5, "when": datetime.date(2026, 1, 2)}
    record = records.get(handle.id)
    assert record["expires_at"] - record["ended_at"] == datetime.timedelta(days=7)


def test_a_failed_attempt_is_retrying_then_succeeded_in_one_record(app, task_queue):
    handle = flaky_once("t1")
    queued = task_queue.pending[0]
    outcomes = task_queue.run_pending(max_attempts=1, raise_errors=False)
    assert outcomes[0].status == 500
    status = handle.status()
    assert status.state == "retrying" and status.attempts == 1 and "RuntimeError: transient" in status.error
    assert "Traceback" in records.get(handle.id)["traceback"]
    task_queue.transport.pending.append(dataclasses.replace(queued, retry_count=1, execution_count=1))
    task_queue.run_pending()
    status = handle.status()
    assert status.state == "succeeded" and status.attempts == 2 and status.error is None
    assert handle.result(timeout=1) == "ok"
    assert len(db.Query(records.RECORD_KIND).run()) == 1


def test_a_permanent_failure_raises_task_failed_with_type_message_and_traceback(app, task_queue):
    handle = broken()
    task_queue.run_pending(raise_errors=False)
    assert _state(handle) == "failed"
    with pytest.raises(TaskFailed) as caught:
        handle.result(timeout=5)
    assert caught.value.error_type == "PermanentTaskFailure"
    assert "cannot work: the input is gone" in caught.value.error_message
    assert "Traceback" in caught.value.traceback and "in broken" in caught.value.traceback
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1


def test_result_times_out_while_the_task_waits(app, task_queue):
    handle = add(1, 1)
    with pytest.raises(TimeoutError, match="did not finish"):
        handle.result(timeout=0.2)
    assert RUNS == []


def test_result_waits_for_a_task_run_elsewhere(app, task_queue):
    handle = add(4, 5)
    worker = threading.Thread(target=lambda: (GATE.wait(30), task_queue.run_pending()))
    worker.start()
    try:
        GATE.set()
        assert handle.result(timeout=30)["sum"] == 9
    finally:
        worker.join(30)


def test_a_result_core_json_cannot_encode_fails_the_task_clearly(app, task_queue):
    handle = returns_unencodable()
    task_queue.run_pending(raise_errors=False)
    with pytest.raises(TaskFailed) as caught:
        handle.result(timeout=5)
    assert "result of" in caught.value.error_message and "cannot be stored" in caught.value.error_message
    assert RUNS == ["unencodable"]  # not retried


def test_a_succeeded_tracked_task_is_not_run_again_by_a_duplicate_push(app, task_queue):
    handle = add(1, 2)
    request = task_queue.pending[0]
    task_queue.run_pending()
    task_queue.transport.pending.append(dataclasses.replace(request))  # the queue delivers it again
    outcomes = task_queue.run_pending()
    assert RUNS == ["add"]
    assert outcomes[0].status == 200 and outcomes[0].skipped and not outcomes[0].ran
    assert handle.status().attempts == 1

    untracked("u")
    request = task_queue.pending[0]
    task_queue.run_pending()
    task_queue.transport.pending.append(dataclasses.replace(request))
    task_queue.run_pending()
    assert RUNS.count("u") == 2  # an untracked task has nothing to remember its success by


def test_a_second_delivery_while_the_first_runs_is_answered_409(app, task_queue):
    waits_for_gate()
    request = task_queue.pending[0]
    worker = threading.Thread(target=task_queue.run_pending)
    worker.start()
    try:
        assert STARTED.wait(30)
        outcome = app.test_client().post(request.request.path, data=request.request.body,
                                         headers=task_queue.transport._headers(request))
        assert outcome.status_code == 409
    finally:
        GATE.set()
        worker.join(30)
    assert RUNS == ["gate"]


def test_cancel_before_dispatch_removes_the_task(app, task_queue):
    handle = add(1, 2)
    assert len(task_queue.pending) == 1
    assert handle.cancel() is True
    assert task_queue.pending == [] and _state(handle) == "cancelled"
    with pytest.raises(TaskCancelled):
        handle.result(timeout=1)
    assert handle.cancel() is False  # a clear no-op on an ended task


def test_cancel_of_a_scheduled_task_the_queue_cannot_delete_ends_it_cancelled_unrun(app, task_queue):
    handle = add(1, 2, _eta=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2))
    queued = task_queue.pending[0]
    assert handle.cancel() is True
    task_queue.transport.pending.append(queued)  # as if the queue had refused the delete (501)
    assert task_queue.run_pending() == []  # not due yet
    outcomes = task_queue.advance(2 * 3600 + 1)
    assert RUNS == [] and outcomes[0].status == 200 and outcomes[0].skipped == "cancelled; not run"
    assert records.get(handle.id)["ended_at"] is not None


def test_cancel_while_running_lets_the_attempt_end_but_the_task_ends_cancelled(app, task_queue):
    handle = waits_for_gate()
    worker = threading.Thread(target=task_queue.run_pending)
    worker.start()
    try:
        assert STARTED.wait(30)
        assert _state(handle) == "running"
        assert handle.cancel() is True
    finally:
        GATE.set()
        worker.join(30)
    assert _state(handle) == "cancelled"
    with pytest.raises(TaskCancelled):
        handle.result(timeout=1)


def test_cancel_of_a_finished_task_answers_false(app, task_queue):
    handle = add(1, 2)
    task_queue.run_pending()
    assert handle.cancel() is False and _state(handle) == "succeeded"


def test_untracked_calls_have_no_record_but_can_be_cancelled_in_the_queue(app, task_queue):
    handle = untracked("x")
    assert not handle.tracked
    with pytest.raises(UntrackedTask):
        handle.status()
    task_queue.run_pending()
    assert db.Query(records.RECORD_KIND).run() == []
    handle = untracked("y", _name="named-y")
    assert handle.cancel() is True and task_queue.pending == []


def test_tracking_per_call_and_per_queue(make_app, settings):
    app = make_app(settings=settings.replace(tasks_tracked_queues=frozenset({"background"})))
    with app.app_context():
        assert untracked("a", _track=True).tracked
        assert untracked("b", _queue="background").tracked
        assert not untracked("c").tracked
        assert not add(1, 2, _track=False).tracked


def test_fetch_rebuilds_a_handle_from_its_id(app, task_queue):
    handle = add(3, 4)
    again = TaskHandle.fetch(handle.id)
    assert again.id == handle.id and again.queue == "default" and _state(again) == "queued"
    task_queue.run_pending()
    assert again.result(timeout=1)["sum"] == 7
    with pytest.raises(UntrackedTask):
        TaskHandle.fetch("no-such-task")


def test_a_taken_name_is_reported_on_the_handle(app, task_queue):
    with outbox.RequestScope(get_runtime()):  # as in a request: unnamed calls wait for the batch
        batched = untracked("b")
        first = untracked("n", _name="only-once")
        second = untracked("n", _name="only-once")
        assert batched.duplicate is None  # not created yet
        assert first.duplicate is False and second.duplicate is True
    assert batched.duplicate is False
    tracked_second = add(1, 1, _name="only-once")
    assert tracked_second.duplicate is True and records.get(tracked_second.id) is None


def test_tags_and_description_of_the_payload_reach_the_record(app, task_queue, monkeypatch):
    original = deferred_module.message.Envelope

    def with_extras(**kwargs):
        kwargs["payload"] = {**kwargs["payload"], "tags": ["billing", "monthly"], "description": "Close October"}
        return original(**kwargs)

    monkeypatch.setattr(deferred_module.message, "Envelope", with_extras)
    handle = add(1, 1)
    record = records.get(handle.id)
    assert record["tags"] == ["billing", "monthly"] and record["description"] == "Close October"


def test_expired_records_are_removed_by_the_built_in_periodic_task(app, task_queue, monkeypatch):
    handle = add(1, 1)
    task_queue.run_pending()
    keep = add(2, 2)
    task_queue.run_pending()
    ended = records.get(handle.id)["ended_at"]
    record = records.get(handle.id)
    record["expires_at"] = ended - datetime.timedelta(seconds=1)
    db.put(record)
    registry = get_runtime().registry
    install_builtins(registry)
    spec = registry.periodic.get("core.tasks.periodic.purge_task_records_task")
    assert spec.schedule is not None
    spec.func()
    assert records.get(handle.id) is None and records.get(keep.id) is not None


def test_a_tracked_result_expires_after_result_ttl_of_advanced_time(app, task_queue):
    handle = add(1, 1)
    task_queue.run_pending()
    ttl = get_runtime().settings.tasks_result_ttl
    task_queue.advance(ttl - 60)
    task_queue.ping_cron("default")  # the built-in hourly purge runs: the result is younger than its TTL
    assert handle.result(timeout=1) == {"sum": 2, "when": datetime.date(2026, 1, 2)}
    task_queue.advance(3600)
    task_queue.ping_cron("default")  # an hour on, past the TTL: purged
    with pytest.raises(UntrackedTask, match="expired"):
        handle.status()
