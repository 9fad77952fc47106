"""Task records in Datastore: written with their task, claimed by an attempt, ended, cancelled, purged.

The record itself, its states and transitions are :mod:`core.tasks.task_record` (its names are
reached here too). A record changes by a conditional write: a write names the version of the
record it was based on and Datastore refuses it if another write came first (then the record is
read again and the change decided anew), so a cancel racing a start, or two deliveries of one task
racing each other, end in one state. A write costs one round trip when the version is known: the
send path's write returns it and the task's envelope carries it with what the record was written
with (:func:`stamp`), so a first attempt claims its record without reading it, and the attempt's
end is a write against the claim's version (:class:`Held`). Only when a version is not known (a
record written in a transaction), or is stale, is the record read first. A cancel and a person's
retry are transactions: their commit changes the version, so a write based on the old one is
refused.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from core import db
from core.clock import utc_now as clock
from core.tasks.task_record import (
    CANCELLED,
    EXPIRED,
    FAILED,
    FINAL_STATES,
    MAX_INDEXED_CHARS,
    MAX_RESULT_BYTES,
    QUEUED,
    RECORD_KIND,
    RETRYING,
    RUNNING,
    STATES,
    SUCCEEDED,
    TRANSITIONS,
    InvalidRecord,
    InvalidTransition,
    ResultNotEncodable,
    TaskRecord,
    TaskState,
    decode_result,
    encode_result,
    get,
    record_key,
)

__all__ = [
    "TaskRecord", "TaskState", "InvalidRecord", "InvalidTransition", "ResultNotEncodable", "RECORD_KIND",
    "MAX_INDEXED_CHARS", "MAX_RESULT_BYTES", "STATES", "FINAL_STATES", "TRANSITIONS", "QUEUED", "RUNNING",
    "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "record_key", "get", "encode_result",
    "decode_result", "write_new", "Held", "stamp", "written", "Start", "begin", "succeed", "fail", "retrying",
    "waiting", "cancel", "reopen", "purge_expired",
]

log = logging.getLogger(__name__)


def write_new(task_id: str, *, target: str | None, queue: str, kind: str, queue_task: str | None,
              eta: datetime.datetime | None, ttl: datetime.timedelta,
              payload: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Write a new ``queued`` record (the send path, with its task); returns its :func:`stamp`.

    ``None`` inside a transaction: the record is written when it commits, its version unknown here.
    """
    record = TaskRecord.new(task_id, target=target, queue=queue, kind=kind, queue_task=queue_task, eta=eta,
                            ttl=ttl, payload=payload)
    version = db.put_versioned(record.to_entity())
    return None if version is None else stamp(record, version)


@dataclasses.dataclass
class Held:
    """A record as this process last wrote or read it, and the version Datastore gave it then.

    A write based on it is refused when the record changed since. ``record`` is ``None`` when it
    is not known (not read yet, or a write of it failed): the next change reads it first.
    """

    record: TaskRecord | None
    version: int = db.ABSENT


def stamp(record: TaskRecord, version: int) -> dict[str, Any]:
    """What a queued record was written with beyond its task's envelope, and its version (:func:`written`)."""
    return {"version": version, "target": record.target, "queue_task": record.queue_task, "eta": record.eta,
            "enqueued_at": record.enqueued_at, "expires_at": record.expires_at}


def written(task_id: str, stamped: Mapping[str, Any] | None, *, kind: str, queue: str,
            payload: Mapping[str, Any]) -> Held | None:
    """The record the send path wrote, rebuilt from its envelope and :func:`stamp` (``None``: no usable stamp).

    Rebuilt, not read: if it changed since, its version differs and the first write is refused.
    """
    if not stamped:
        return None
    version, enqueued_at, expires_at = stamped.get("version"), stamped.get("enqueued_at"), stamped.get("expires_at")
    target, queue_task, eta = stamped.get("target"), stamped.get("queue_task"), stamped.get("eta")
    if not (type(version) is int and version > 0 and isinstance(enqueued_at, datetime.datetime)
            and isinstance(expires_at, datetime.datetime) and (eta is None or isinstance(eta, datetime.datetime))
            and (target is None or isinstance(target, str)) and (queue_task is None or isinstance(queue_task, str))):
        return None
    record = TaskRecord.new(task_id, target=target, queue=queue, kind=kind, queue_task=queue_task, eta=eta,
                            ttl=datetime.timedelta(0), payload=payload, now=enqueued_at)
    record.expires_at = expires_at
    return Held(record, version)


def _readable(entity: db.Entity | None) -> TaskRecord | None:
    """The record ``entity`` holds; ``None`` if it is missing or unreadable (logged: the task must not hang on it)."""
    if entity is None:
        return None
    try:
        return TaskRecord.from_entity(entity)
    except InvalidRecord:
        log.exception("the record of task %s cannot be read; a new one replaces it", entity.key.name)
        return None


def _stored(task_id: str) -> TaskRecord | None:
    return _readable(get(task_id))


#: Conditional writes of one record refused in a row before a change gives up (each one means another
#: write landed in between: the record is read again and the change decided anew).
MAX_CONFLICTS = 10


def _read(task_id: str, held: Held) -> None:
    """Read the record into ``held``: ``record`` ``None`` if it is missing or unreadable (logged)."""
    entity, held.version = db.get_versioned(record_key(task_id))
    held.record = _readable(entity)


def _write(held: Held) -> bool:
    """Write the held record if it is stored at the held version still; ``False``: another write came first."""
    assert held.record is not None
    try:
        version = db.put_if_unchanged(held.record.to_entity(), held.version)
    except BaseException:
        held.record = None  # changed in memory, maybe not stored: read it before the next change
        raise
    if version is None:
        held.record = None
        return False
    held.version = version
    return True


def _conflicts(task_id: str) -> db.TransactionFailedError:
    return db.TransactionFailedError(f"the record of task {task_id} changed under {MAX_CONFLICTS} writes in a row")


@dataclasses.dataclass(frozen=True)
class Start:
    """What :func:`begin` decided: run the attempt, or answer without running."""

    verdict: str  # "run", "done" (succeeded before), "cancelled", "failed" (ended before), "busy"
    attempts: int = 0
    #: The record as the attempt claimed it ("run"): its end is written against this version.
    held: Held | None = dataclasses.field(default=None, compare=False, repr=False)


def begin(task_id: str, *, attempt: int, lease: datetime.timedelta,
          fallback: Callable[[], TaskRecord], written: Held | None = None) -> Start:
    """Claim the record for this attempt unless it ended or another one runs (one conditional write).

    ``written``: the record as the send path wrote it (:func:`written`), claimed without a read. A
    record that is missing (expired, or never written) or unreadable is created from ``fallback()``.
    """
    held = written or Held(None)
    for _ in range(MAX_CONFLICTS):
        if held.record is None:
            _read(task_id, held)
            if held.record is None:
                held.record = fallback()
        record, now = held.record, clock()
        if record.state is SUCCEEDED:
            return Start("done", record.attempts)
        if record.state is FAILED:
            return Start("failed", record.attempts)
        if record.state is RUNNING and record.lease_until is not None and record.lease_until > now:
            return Start("busy", record.attempts)
        if record.state is CANCELLED:
            record.settle_cancel(now)  # touched, so a refused push shows (``updated_at`` after ``ended_at``)
            if _write(held):
                return Start("cancelled", record.attempts)
            continue
        record.start(now, attempt=attempt, lease=lease)
        if _write(held):
            return Start("run", record.attempts, held)
    raise _conflicts(task_id)


def _settle(task_id: str, change: Callable[[TaskRecord, datetime.datetime], None],
            held: Held | None = None) -> TaskState | None:
    """End an attempt with ``change`` unless the task was cancelled meanwhile (one conditional write).

    ``held``: the record as the attempt claimed it (:attr:`Start.held`), written without a read and
    kept up to date. Returns the state the record is in afterwards (``None``: no record). A record
    that can't take the change (another attempt ended the task meanwhile) is left as it is.
    """
    held = held or Held(None)
    for _ in range(MAX_CONFLICTS):
        read = held.record is None
        if read:
            _read(task_id, held)
            if held.record is None:
                return None
        record, now = held.record, clock()
        assert record is not None
        if record.state is CANCELLED:
            record.settle_cancel(now)
        else:
            try:
                change(record, now)
            except InvalidTransition as exc:
                if not read:  # what this attempt held is not what is stored: look again
                    held.record = None
                    continue
                log.warning("%s; its record is left as it is", exc)
                return record.state
        if _write(held):
            return record.state
    raise _conflicts(task_id)


def succeed(task_id: str, result: str | None, ttl: datetime.timedelta, *, held: Held | None = None) -> TaskState | None:
    return _settle(task_id, lambda record, now: record.succeed(now, result, ttl), held)


def fail(task_id: str, error: BaseException, ttl: datetime.timedelta, *, held: Held | None = None) -> TaskState | None:
    return _settle(task_id, lambda record, now: record.fail(now, error, ttl), held)


def retrying(task_id: str, error: BaseException, *, queue_task: str | None = None,
             eta: datetime.datetime | None = None, held: Held | None = None) -> TaskState | None:
    """The attempt failed and another one will come (the queue's, or one we scheduled)."""
    return _settle(task_id, lambda record, now: record.retry(now, error, queue_task=queue_task, eta=eta), held)


def waiting(task_id: str, *, queue_task: str | None = None,
            eta: datetime.datetime | None = None, held: Held | None = None) -> TaskState | None:
    """The attempt waits for its lock: uncounted, without an error (another one will come)."""
    return _settle(task_id, lambda record, now: record.wait(now, queue_task=queue_task, eta=eta), held)


def cancel(task_id: str) -> tuple[bool, TaskRecord | None]:
    """In a transaction: revoke a task that has not ended. ``(cancelled now?, the record)``."""
    def revoke() -> tuple[bool, TaskRecord | None]:
        record = TaskRecord.fetch(task_id)
        if record is None or record.finished:
            return False, record
        record.cancel(clock())
        record.save()
        return True, record

    return db.run_in_transaction(revoke)


def reopen(task_id: str) -> bool:
    """Make an ended task runnable again (a person retries its dead letter); ``False`` if it has no record.

    Its attempts start from zero: a retried task gets its whole retry budget again. Must run in the
    transaction that sends the task again. A task that has not ended is runnable already and a
    succeeded one never runs again: both records are left as they are.
    """
    record = _stored(task_id)
    if record is None:
        return False
    if QUEUED in TRANSITIONS[record.state]:
        record.reopen(clock())
        record.save()
    return True


def purge_expired(*, limit: int = 500) -> int:
    """Delete records whose ``expires_at`` has passed; returns how many."""
    query = db.Query(RECORD_KIND).filter("expires_at <", clock()).keys_only()
    keys = [e.key for e in query.run(limit=limit)]
    if keys:
        db.delete(keys)
    return len(keys)
