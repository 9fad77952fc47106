"""Task records: one Datastore entity per tracked task, and its state transitions.

Kind ``_tasks_record``, key name = the task id (the envelope's id, kept across retries)::

    queued → running → retrying → running … → succeeded | failed | cancelled

Every transition after the first write runs in a Datastore transaction, so a cancel racing a
start, or two deliveries of one task racing each other, end in one state. Besides the shared
fields (state, target, queue, kind, attempts, enqueued_at, started_at, ended_at, updated_at,
error, error_type, traceback, result, tags, description, group, expires_at) a record keeps
``queue_task`` (the queue's name for the task, to delete it on cancel), ``eta`` and
``lease_until`` (how long the running attempt owns the task).
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import traceback as tb
from collections.abc import Callable, Mapping
from typing import Any

from core import db
from core import json as tagged_json
from core.tasks.errors import error_text

log = logging.getLogger(__name__)

RECORD_KIND = "_tasks_record"
QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "retrying", "succeeded", "failed", "cancelled")
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: Bytes of encoded result a record keeps (Datastore refuses entities over 1 MiB).
MAX_RESULT_BYTES = 900_000
#: Characters of traceback kept (the error text is cut by ``errors.error_text``).
MAX_TRACEBACK_CHARS = 20_000
#: Characters of a target name, tag or group kept (indexed), and of a description.
MAX_INDEXED_CHARS, MAX_DESCRIPTION_CHARS = 300, 20_000
_UNINDEXED = ("traceback", "result", "error", "description")

#: The clock of every transition; tests replace it to measure times.
clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)  # noqa: E731


class ResultNotEncodable(TypeError):
    """A task's return value cannot travel through ``core.json`` or is too large to keep."""


def _indexable(text: str) -> str:
    """``text`` cut to what an indexed property holds (1,500 bytes; 4 bytes per character at most)."""
    return text if len(text) <= MAX_INDEXED_CHARS else text[:MAX_INDEXED_CHARS - 1] + "…"


def record_key(task_id: str) -> db.Key:
    return db.key(RECORD_KIND, task_id)


def get(task_id: str) -> db.Entity | None:
    return db.get(record_key(task_id))


def new_record(task_id: str, *, target: str | None, queue: str, kind: str, queue_task: str | None,
               eta: datetime.datetime | None, ttl: datetime.timedelta,
               payload: Mapping[str, Any] | None = None) -> db.Entity:
    """A ``queued`` record; ``tags``, ``description`` and ``group`` come from the payload if present."""
    now = clock()
    payload = payload or {}
    tags = payload.get("tags")
    description = payload.get("description")
    group = payload.get("group")
    entity = db.Entity(record_key(task_id), exclude_from_indexes=_UNINDEXED)
    entity.update({
        "state": QUEUED, "target": _indexable(target) if target is not None else None, "queue": queue, "kind": kind,
        "attempts": 0,
        "enqueued_at": now, "started_at": None, "ended_at": None, "updated_at": now,
        "error": None, "error_type": None, "traceback": None, "result": None,
        "tags": [_indexable(t) for t in tags if isinstance(t, str)] if isinstance(tags, (list, tuple)) else [],
        "description": description[:MAX_DESCRIPTION_CHARS] if isinstance(description, str) else None,
        "group": _indexable(group) if isinstance(group, str) else None,
        "queue_task": queue_task, "eta": eta, "lease_until": None, "expires_at": max(now, eta or now) + ttl,
    })
    return entity


@dataclasses.dataclass(frozen=True)
class Start:
    """What :func:`begin` decided: run the attempt, or answer without running."""

    verdict: str  # "run", "done" (succeeded before), "cancelled", "failed" (ended before), "busy"
    attempts: int = 0


def begin(task_id: str, *, attempt: int, lease: datetime.timedelta,
          fallback: Callable[[], db.Entity]) -> Start:
    """In a transaction: claim the record for this attempt unless it ended or another one runs.

    A record that is missing (expired, or never written) is created from ``fallback()``.
    """
    def claim() -> Start:
        now = clock()
        record = get(task_id) or fallback()
        state = record.get("state")
        if state == SUCCEEDED:
            return Start("done", int(record.get("attempts") or 0))
        if state == CANCELLED:
            # Touched, so a refused push shows (``updated_at`` after ``ended_at``).
            if record.get("ended_at") is None:
                _end(record, CANCELLED, now)
            record["updated_at"] = now
            db.put(record)
            return Start("cancelled", int(record.get("attempts") or 0))
        if state == FAILED:
            return Start("failed", int(record.get("attempts") or 0))
        lease_until = record.get("lease_until")
        if state == RUNNING and lease_until is not None and lease_until > now:
            return Start("busy", int(record.get("attempts") or 0))
        attempts = max(attempt, int(record.get("attempts") or 0) + (1 if state == RUNNING else 0))
        record.update({"state": RUNNING, "attempts": attempts, "started_at": now, "ended_at": None,
                       "updated_at": now, "lease_until": now + lease})
        db.put(record)
        return Start("run", attempts)

    return db.run_in_transaction(claim)


def encode_result(value: Any, *, what: str) -> str:
    """The result as ``core.json`` text; :class:`ResultNotEncodable` names what went wrong."""
    try:
        text = tagged_json.dumps(value, path="result")
    except TypeError as exc:
        raise ResultNotEncodable(f"the result of {what} cannot be stored: {exc}") from None
    if len(text.encode("utf-8")) > MAX_RESULT_BYTES:
        raise ResultNotEncodable(f"the result of {what} is {len(text)} characters of JSON; a task record "
                                 f"keeps at most {MAX_RESULT_BYTES} bytes")
    return text


def decode_result(text: str | None) -> Any:
    return None if text is None else tagged_json.loads(text)


def _end(record: db.Entity, state: str, now: datetime.datetime) -> None:
    record.update({"state": state, "ended_at": now, "updated_at": now, "lease_until": None})


def _error_fields(error: BaseException) -> dict[str, Any]:
    return {"error": error_text(error), "error_type": type(error).__name__,
            "traceback": "".join(tb.format_exception(error))[-MAX_TRACEBACK_CHARS:]}


def _transition(task_id: str, change: Callable[[db.Entity, datetime.datetime], None]) -> str | None:
    """Apply ``change`` unless the task was cancelled meanwhile; returns the state it ends in."""
    def apply() -> str | None:
        record = get(task_id)
        if record is None:
            return None
        if record.get("state") != CANCELLED:
            change(record, clock())
        elif record.get("ended_at") is None:
            _end(record, CANCELLED, clock())
        db.put(record)
        return str(record.get("state"))

    return db.run_in_transaction(apply)


def succeed(task_id: str, result: str | None, ttl: datetime.timedelta) -> str | None:
    def change(record: db.Entity, now: datetime.datetime) -> None:
        _end(record, SUCCEEDED, now)
        record.update({"result": result, "error": None, "error_type": None, "traceback": None,
                       "expires_at": now + ttl})
    return _transition(task_id, change)


def fail(task_id: str, error: BaseException, ttl: datetime.timedelta) -> str | None:
    def change(record: db.Entity, now: datetime.datetime) -> None:
        _end(record, FAILED, now)
        record.update({**_error_fields(error), "expires_at": now + ttl})
    return _transition(task_id, change)


def retrying(task_id: str, error: BaseException, *, queue_task: str | None = None,
             eta: datetime.datetime | None = None) -> str | None:
    """The attempt failed and another one will come (the queue's, or one we scheduled)."""
    def change(record: db.Entity, now: datetime.datetime) -> None:
        record.update({"state": RETRYING, "updated_at": now, "lease_until": None, **_error_fields(error)})
        if queue_task is not None:
            record.update({"queue_task": queue_task, "eta": eta})
    return _transition(task_id, change)


def cancel(task_id: str) -> tuple[bool, db.Entity | None]:
    """In a transaction: revoke a task that has not ended. ``(cancelled now?, the record)``."""
    def revoke() -> tuple[bool, db.Entity | None]:
        record = get(task_id)
        if record is None or record.get("state") in FINAL_STATES:
            return False, record
        now = clock()
        if record.get("state") == RUNNING:
            # The attempt in progress can't be stopped; it ends the record when it returns.
            record.update({"state": CANCELLED, "updated_at": now})
        else:
            _end(record, CANCELLED, now)
        db.put(record)
        return True, record

    return db.run_in_transaction(revoke)


def reopen(task_id: str) -> bool:
    """Make an ended task runnable again (a person retries its dead letter); ``False`` if it has no record.

    Its attempts start from zero: a retried task gets its whole retry budget again. Must run in
    the transaction that sends the task again.
    """
    record = get(task_id)
    if record is None:
        return False
    now = clock()
    record.update({"state": QUEUED, "ended_at": None, "updated_at": now, "lease_until": None, "result": None,
                   "attempts": 0})
    db.put(record)
    return True


def purge_expired(*, limit: int = 500) -> int:
    """Delete records whose ``expires_at`` has passed; returns how many."""
    query = db.Query(RECORD_KIND).filter("expires_at <", clock()).keys_only()
    keys = [e.key for e in query.run(limit=limit)]
    if keys:
        db.delete(keys)
    return len(keys)
