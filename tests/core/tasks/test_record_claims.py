"""Claiming and ending a task record with conditional writes: what travels in the envelope, and the races."""
from __future__ import annotations

import datetime

from core import db
from core.tasks import records
from core.tasks.records import TaskState

LEASE = datetime.timedelta(minutes=10)
TTL = datetime.timedelta(days=7)
ETA = datetime.datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
PAYLOAD = {"target": "app.jobs.render", "tags": ["monthly", "pdf"], "description": "render", "group": "g1"}


def enqueue(task_id: str) -> dict:
    """The record the send path writes, and the stamp its envelope carries."""
    stamp = records.write_new(task_id, target="app.jobs.render", queue="mail", kind="deferred",
                              queue_task=f"{task_id}-q", eta=ETA, ttl=TTL, payload=PAYLOAD)
    assert stamp is not None
    return stamp


def delivered(task_id: str, stamp: dict) -> records.Held:
    held = records.written(task_id, stamp, kind="deferred", queue="mail", payload=PAYLOAD)
    assert held is not None
    return held


def claim(task_id: str, stamp: dict) -> records.Start:
    return records.begin(task_id, attempt=1, lease=LEASE, fallback=lambda: records.TaskRecord(task_id),
                         written=delivered(task_id, stamp))


def test_the_stamp_rebuilds_the_record_exactly_as_the_send_path_wrote_it(app):
    with app.app_context():
        stamp = enqueue("s1")
        stored = records.get("s1")
        rebuilt = delivered("s1", stamp).record.to_entity()
        assert dict(rebuilt) == dict(stored)
        assert set(rebuilt.exclude_from_indexes) == set(stored.exclude_from_indexes)


def test_a_first_attempt_claims_with_the_stamp_and_a_duplicate_delivery_is_refused(app):
    with app.app_context():
        stamp = enqueue("s2")
        first = claim("s2", stamp)
        assert (first.verdict, first.attempts) == ("run", 1)
        assert claim("s2", stamp).verdict == "busy", "the same body again while the first attempt runs"
        assert records.succeed("s2", '"ok"', TTL, held=first.held) is TaskState.SUCCEEDED
        assert claim("s2", stamp).verdict == "done", "the same body again after the task succeeded"
        stored = records.TaskRecord.fetch("s2")
        assert (stored.state, stored.attempts, stored.result, stored.tags, stored.eta) == (
            TaskState.SUCCEEDED, 1, '"ok"', ["monthly", "pdf"], ETA)


def test_a_task_cancelled_before_its_first_delivery_is_not_claimed_with_its_stale_stamp(app):
    with app.app_context():
        stamp = enqueue("s3")
        assert records.cancel("s3")[0] is True
        assert claim("s3", stamp).verdict == "cancelled"
        assert records.TaskRecord.fetch("s3").state is TaskState.CANCELLED


def test_a_cancel_that_lands_while_the_task_runs_is_not_overwritten_by_its_success(app):
    with app.app_context():
        started = claim("s4", enqueue("s4"))
        assert records.cancel("s4")[0] is True
        assert records.succeed("s4", '"ok"', TTL, held=started.held) is TaskState.CANCELLED
        stored = records.TaskRecord.fetch("s4")
        assert stored.state is TaskState.CANCELLED and stored.result is None and stored.ended_at is not None


def test_what_another_writer_added_while_the_task_ran_survives_its_end(app):
    with app.app_context():
        started = claim("s5", enqueue("s5"))
        entity = records.get("s5")
        entity["progress_done"] = 7  # as a progress report writes it, in its own transaction
        db.put(entity)
        assert records.succeed("s5", None, TTL, held=started.held) is TaskState.SUCCEEDED
        stored = records.get("s5")
        assert stored["state"] == "succeeded" and stored["progress_done"] == 7


def test_a_malformed_stamp_is_ignored_and_the_record_is_read(app):
    with app.app_context():
        stamp = enqueue("s6")
        assert records.written("s6", {**stamp, "version": "7"}, kind="deferred", queue="mail", payload={}) is None
        assert records.written("s6", None, kind="deferred", queue="mail", payload={}) is None
        started = records.begin("s6", attempt=1, lease=LEASE, fallback=lambda: records.TaskRecord("s6"))
        assert started.verdict == "run" and records.TaskRecord.fetch("s6").target == "app.jobs.render"


def test_an_end_that_what_it_held_refuses_is_decided_on_what_is_stored(app):
    with app.app_context():
        first = claim("s7", enqueue("s7"))
        assert records.retrying("s7", ValueError("flaky"), held=first.held) is TaskState.RETRYING
        second = records.begin("s7", attempt=2, lease=LEASE, fallback=lambda: records.TaskRecord("s7"))
        assert second.verdict == "run"
        # The first attempt's held record says retrying (it can't succeed); the stored one runs.
        assert records.succeed("s7", '"ok"', TTL, held=first.held) is TaskState.SUCCEEDED
        assert records.TaskRecord.fetch("s7").result == '"ok"'


def test_an_end_finds_no_record_when_it_was_removed_while_the_task_ran(app):
    with app.app_context():
        started = claim("s8", enqueue("s8"))
        db.delete(records.record_key("s8"))  # purged, or withdrawn as a duplicate
        assert records.succeed("s8", '"ok"', TTL, held=started.held) is None
        assert records.get("s8") is None
