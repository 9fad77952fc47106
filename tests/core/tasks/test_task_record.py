"""The typed task record: its transitions, its trip through the Datastore emulator, records of the old format."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.tasks import TaskCancelled, TaskFailed, TaskHandle, TaskStatus, records
from core.tasks.queryiter.runs import RunInfo
from core.tasks.records import InvalidRecord, InvalidTransition, TaskRecord, TaskState

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
LEASE = datetime.timedelta(minutes=10)
TTL = datetime.timedelta(days=7)


def fresh(task_id: str = "t1") -> TaskRecord:
    return TaskRecord(task_id, TaskState.QUEUED, target="app.jobs.render", queue="default", kind="deferred",
                      enqueued_at=T0, updated_at=T0, expires_at=T0 + TTL)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


# --- transitions, allowed and refused ------------------------------------------------------------

def test_a_task_runs_retries_and_succeeds_through_its_transitions():
    record = fresh()
    record.start(at(1), attempt=1, lease=LEASE)
    assert (record.state, record.attempts, record.started_at, record.lease_until) == (
        TaskState.RUNNING, 1, at(1), at(1) + LEASE)
    record.retry(at(2), ValueError("flaky"), queue_task="t1-a2", eta=at(10))
    assert (record.state, record.error_type, record.queue_task, record.eta, record.lease_until) == (
        TaskState.RETRYING, "ValueError", "t1-a2", at(10), None)
    assert "flaky" in record.error and "ValueError" in record.traceback
    record.start(at(10), attempt=2, lease=LEASE)
    record.succeed(at(11), '{"ok": true}', TTL)
    assert (record.state, record.attempts, record.ended_at, record.error, record.expires_at) == (
        TaskState.SUCCEEDED, 2, at(11), None, at(11) + TTL)
    assert record.finished and record.value() == {"ok": True} and str(record) == "succeeded"


def test_a_running_attempt_whose_lease_ran_out_is_taken_over_and_counted():
    record = fresh()
    record.start(at(1), attempt=1, lease=LEASE)
    record.start(at(700), attempt=1, lease=LEASE)
    assert record.state is TaskState.RUNNING and record.attempts == 2


@pytest.mark.parametrize(("state", "move"), [
    (TaskState.SUCCEEDED, lambda r: r.fail(at(5), ValueError("late"), TTL)),
    (TaskState.SUCCEEDED, lambda r: r.start(at(5), attempt=2, lease=LEASE)),
    (TaskState.SUCCEEDED, lambda r: r.reopen(at(5))),
    (TaskState.SUCCEEDED, lambda r: r.cancel(at(5))),
    (TaskState.FAILED, lambda r: r.succeed(at(5), None, TTL)),
    (TaskState.CANCELLED, lambda r: r.start(at(5), attempt=1, lease=LEASE)),
    (TaskState.QUEUED, lambda r: r.succeed(at(5), None, TTL)),
    (TaskState.QUEUED, lambda r: r.retry(at(5), ValueError("never ran"))),
    (TaskState.QUEUED, lambda r: r.reopen(at(5))),
    (TaskState.RETRYING, lambda r: r.fail(at(5), ValueError("never ran"), TTL)),
    (TaskState.QUEUED, lambda r: r.settle_cancel(at(5))),
])
def test_impossible_transitions_are_refused_and_change_nothing(state, move):
    record = fresh()
    record.state = state
    before = (record.state, record.ended_at, record.updated_at, record.error, record.result)
    with pytest.raises(InvalidTransition, match=f"task t1 is {state.value}"):
        move(record)
    assert (record.state, record.ended_at, record.updated_at, record.error, record.result) == before


def test_a_cancel_during_an_attempt_ends_when_the_attempt_returns_and_a_failed_task_reopens():
    record = fresh()
    record.start(at(1), attempt=1, lease=LEASE)
    record.cancel(at(2))
    assert record.state is TaskState.CANCELLED and record.ended_at is None and record.finished
    record.settle_cancel(at(3))
    assert record.ended_at == at(3) and record.lease_until is None
    record.reopen(at(4))
    assert (record.state, record.ended_at, record.updated_at) == (TaskState.QUEUED, None, at(4))

    failed = fresh("t2")
    failed.start(at(1), attempt=3, lease=LEASE)
    failed.fail(at(2), RuntimeError("boom"), TTL)
    failed.reopen(at(3))
    assert failed.state is TaskState.QUEUED and failed.attempts == 0  # a reopened task gets its whole budget again


def test_task_status_is_the_record_state_enum_and_run_records_share_it():
    assert TaskStatus is TaskState
    assert TaskState("finished") is TaskState.FINISHED and TaskState.FINISHED.succeeded and TaskState.DONE.ended
    assert not TaskState.STOPPED.ended and not TaskState.RETRYING.ended


# --- through the Datastore emulator ----------------------------------------------------------------

def test_a_record_round_trips_through_the_datastore(app):
    with app.app_context():
        record = TaskRecord.new("rt-1", target="app.jobs.render", queue="default", kind="deferred",
                                queue_task="rt-1", eta=at(30), ttl=TTL,
                                payload={"tags": ["nightly", 3], "description": "Render", "group": "g-1"})
        record.start(at(31), attempt=1, lease=LEASE)
        record.retry(at(32), KeyError("month"), queue_task="rt-1-a2", eta=at(40))
        record.save()
        loaded = TaskRecord.fetch("rt-1")
        assert loaded is not None
        mine = {f: getattr(record, f) for f in record.__dataclass_fields__ if f != "_entity"}
        theirs = {f: getattr(loaded, f) for f in loaded.__dataclass_fields__ if f != "_entity"}
        assert theirs == mine and loaded.state is TaskState.RETRYING and loaded.tags == ["nightly"]
        assert db.get(records.record_key("rt-1"))["state"] == "retrying"  # stored by its word, as before
        assert TaskRecord.fetch("nobody") is None


def old_format(task_id: str, state: str, **values) -> db.Entity:
    """A record as the code before TaskRecord wrote it: a plain entity, a string state (and older: fewer fields)."""
    entity = db.Entity(db.key("_tasks_record", task_id), exclude_from_indexes=("traceback", "result", "error"))
    entity.update({"state": state, "target": "app.jobs.render", "queue": "mail", "kind": "deferred", "attempts": 2,
                   "enqueued_at": T0, "started_at": at(1), "ended_at": None, "updated_at": at(1), "error": None,
                   "error_type": None, "traceback": None, "result": None, "tags": ["x"], "description": None,
                   "group": None, "expires_at": T0 + TTL, "legacy_note": "kept"})
    entity.update(values)
    return entity


def test_a_record_written_in_the_old_format_loads_and_moves_on(app):
    with app.app_context():
        db.put(old_format("old-1", "retrying", error="ValueError: flaky", error_type="ValueError"))
        record = TaskRecord.fetch("old-1")
        assert record is not None
        assert (record.state, record.attempts, record.queue, record.queue_task, record.lease_until) == (
            TaskState.RETRYING, 2, "mail", None, None)
        claim = records.begin("old-1", attempt=1, lease=LEASE, fallback=lambda: fresh("old-1"))
        assert claim.verdict == "run" and claim.attempts == 2
        assert records.succeed("old-1", '"done"', TTL) is TaskState.SUCCEEDED
        stored = db.get(records.record_key("old-1"))
        assert stored["state"] == "succeeded" and stored["legacy_note"] == "kept"  # other fields survive
        # A late failure of an attempt that lost its lease can't unmake the success.
        assert records.fail("old-1", RuntimeError("late"), TTL) is TaskState.SUCCEEDED
        assert db.get(records.record_key("old-1"))["result"] == '"done"'
        # Nor can a retried dead letter run a succeeded task again.
        assert records.reopen("old-1") is True and TaskRecord.fetch("old-1").state is TaskState.SUCCEEDED


def test_a_record_no_version_writes_is_refused_by_name_and_replaced_when_its_task_runs(app):
    with app.app_context():
        db.put(old_format("bad-1", "exploded"))
        with pytest.raises(InvalidRecord, match="bad-1: unknown state 'exploded'"):
            TaskRecord.fetch("bad-1")
        db.put(old_format("bad-2", "queued", attempts="three"))
        with pytest.raises(InvalidRecord, match="bad-2: attempts holds a str"):
            TaskRecord.fetch("bad-2")
        claim = records.begin("bad-2", attempt=1, lease=LEASE, fallback=lambda: fresh("bad-2"))
        assert claim.verdict == "run" and TaskRecord.fetch("bad-2").attempts == 1


def test_the_handle_reads_old_format_records(app):
    with app.app_context():
        db.put([old_format("h-ok", "succeeded", ended_at=at(2), result='{"total": 42}'),
                old_format("h-bad", "failed", ended_at=at(2), error="ValueError: bad month", error_type="ValueError",
                           traceback="Traceback ..."),
                old_format("h-wait", "queued", attempts=0, started_at=None)])
        status = TaskHandle.fetch("h-ok").status()
        assert (status.state, status.attempts, status.queue, status.ended_at) == (
            TaskStatus.SUCCEEDED, 2, "mail", at(2))
        assert status.finished and str(status) == "succeeded"
        assert TaskHandle.fetch("h-ok").result(timeout=1) == {"total": 42}
        with pytest.raises(TaskFailed, match="bad month"):
            TaskHandle.fetch("h-bad").result(timeout=1)
        waiting = TaskHandle.fetch("h-wait")
        assert waiting.queue == "mail" and waiting.status().state is TaskStatus.QUEUED
        assert waiting.cancel() is True and waiting.cancel() is False
        with pytest.raises(TaskCancelled):
            waiting.result(timeout=1)
        assert db.get(records.record_key("h-wait"))["state"] == "cancelled"


def test_query_run_states_are_task_states_and_an_unknown_one_is_refused():
    entity = db.Entity(db.Key("_tasks_query_run", "r1", project="p"))
    entity.update({"class": "app.Reindex", "queue": "default", "status": "stopped", "generation": 0, "step": 3,
                   "started": T0, "updated": at(5)})
    assert RunInfo.from_entity(entity).status is TaskState.STOPPED
    entity["status"] = "queued"  # a task state, but never a query run's
    with pytest.raises(ValueError, match="not a state of a query run"):
        RunInfo.from_entity(entity)
