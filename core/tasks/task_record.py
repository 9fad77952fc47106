"""The task record: one typed class (:class:`TaskRecord`) with a state enum and its transitions.

Kind ``_tasks_record``, key name = the task id (the envelope's id, kept across retries)::

    queued → running → retrying → running … → succeeded | failed | cancelled
    queued | retrying → expired (its ``expires=`` moment passed before an attempt started)
    failed | cancelled → queued (a person sends the task again)

A transition is a method of :class:`TaskRecord` that refuses what can't happen
(:class:`InvalidTransition`); :mod:`core.tasks.records` reads, changes and writes records. Besides
the shared fields (state, target, queue, kind, attempts, enqueued_at, started_at, ended_at,
updated_at, error, error_type, traceback, result, tags, description, group, expires_at) a record
keeps ``queue_task`` (the queue's name for the task, to delete it on cancel), ``eta`` and
``lease_until`` (how long the running attempt owns the task). Records written before this class
existed (plain entities, string states) load as they are; a record edited into something else
raises :class:`InvalidRecord`.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import traceback as tb
from collections.abc import Mapping
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now as clock
from core.tasks.errors import error_text

RECORD_KIND = "_tasks_record"
#: Bytes of encoded result a record keeps (Datastore refuses entities over 1 MiB).
MAX_RESULT_BYTES = 900_000
#: Characters of traceback kept (the error text is cut by ``errors.error_text``).
MAX_TRACEBACK_CHARS = 20_000
#: Characters of a target name, tag or group kept (indexed), and of a description.
MAX_INDEXED_CHARS, MAX_DESCRIPTION_CHARS = 300, 20_000
#: Properties no query reads. Indexed are those the dashboard, workflows and the purge filter or order
#: by (state, target, queue, tags, group, enqueued_at, updated_at, expires_at): each indexed property
#: costs every write of a record index entries (about half of a write's work in the emulator).
_UNINDEXED = ("traceback", "result", "error", "description", "kind", "attempts", "started_at", "ended_at",
              "error_type", "queue_task", "eta", "lease_until")


class TaskState(enum.StrEnum):
    """Where a task is in its life; the run records of callable tasks and query iterators use it too.

    The first seven are a task record's. The last three are words the run records have always
    stored for their own ends, kept so that their records and pages read as before.
    """

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Not started before its ``expires=`` moment: never run (:mod:`core.tasks.expiry`).
    EXPIRED = "expired"
    #: A query run paused on request (it can be resumed).
    STOPPED = "stopped"
    #: A callable run whose own part succeeded (what it started is followed on its own).
    DONE = "done"
    #: A query run that went through every entry and ran its finish.
    FINISHED = "finished"

    @property
    def ended(self) -> bool:
        """Nothing more will run (``stopped`` waits for a person)."""
        return self in _ENDED

    @property
    def succeeded(self) -> bool:
        return self in _SUCCEEDED


QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (
    TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRYING, TaskState.SUCCEEDED, TaskState.FAILED,
    TaskState.CANCELLED, TaskState.EXPIRED)
#: The states a task record can be in.
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED, EXPIRED)
_ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED, TaskState.DONE, TaskState.FINISHED})
_SUCCEEDED = frozenset({SUCCEEDED, TaskState.DONE, TaskState.FINISHED})
_BY_VALUE = {state.value: state for state in STATES}
#: The task record states after which nothing runs (a running task cancelled ends when its attempt returns).
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
#: Which state a task record may go to from each state.
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, EXPIRED}),
    # running → running: the attempt's lease ran out and another attempt takes the task over.
    RUNNING: frozenset({RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED}),
    RETRYING: frozenset({RUNNING, CANCELLED, EXPIRED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
    EXPIRED: frozenset(),
}


class ResultNotEncodable(TypeError):
    """A task's return value cannot travel through ``core.json`` or is too large to keep."""


class InvalidTransition(RuntimeError):
    """A task record was asked to go where its state does not lead (e.g. a succeeded task to fail)."""


class InvalidRecord(ValueError):
    """A stored task record holds what no version of the code writes (edited by hand, or corrupt)."""


def _indexable(text: str) -> str:
    """``text`` cut to what an indexed property holds (1,500 bytes; 4 bytes per character at most)."""
    return text if len(text) <= MAX_INDEXED_CHARS else text[:MAX_INDEXED_CHARS - 1] + "…"


def record_key(task_id: str) -> db.Key:
    return db.key(RECORD_KIND, task_id)


def get(task_id: str) -> db.Entity | None:
    """The stored entity itself (for tools and tests); code reads :meth:`TaskRecord.fetch`."""
    return db.get(record_key(task_id))


@dataclasses.dataclass(eq=False)
class TaskRecord:
    """One tracked task: its state, attempts, times, error and result (``core.json`` text)."""

    id: str
    state: TaskState = QUEUED
    target: str | None = None
    queue: str | None = None
    kind: str | None = None
    attempts: int = 0
    enqueued_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    result: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    description: str | None = None
    group: str | None = None
    queue_task: str | None = None
    eta: datetime.datetime | None = None
    lease_until: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    #: The entity it was read from: written back with the fields it has that this class doesn't know.
    _entity: db.Entity | None = dataclasses.field(default=None, repr=False)

    # --- reading and writing ----------------------------------------------------------------

    @classmethod
    def new(cls, task_id: str, *, target: str | None, queue: str, kind: str, queue_task: str | None,
            eta: datetime.datetime | None, ttl: datetime.timedelta,
            payload: Mapping[str, Any] | None = None, now: datetime.datetime | None = None) -> TaskRecord:
        """A ``queued`` record; ``tags``, ``description`` and ``group`` come from the payload if present."""
        now = now or clock()
        payload = payload or {}
        tags, description, group = payload.get("tags"), payload.get("description"), payload.get("group")
        return cls(
            task_id, QUEUED, target=_indexable(target) if target is not None else None, queue=queue, kind=kind,
            enqueued_at=now, updated_at=now,
            tags=[_indexable(t) for t in tags if isinstance(t, str)] if isinstance(tags, (list, tuple)) else [],
            description=description[:MAX_DESCRIPTION_CHARS] if isinstance(description, str) else None,
            group=_indexable(group) if isinstance(group, str) else None,
            queue_task=queue_task, eta=eta, expires_at=max(now, eta or now) + ttl)

    @classmethod
    def fetch(cls, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or ``None`` (not tracked, expired, never existed)."""
        entity = get(task_id)
        return None if entity is None else cls.from_entity(entity)

    @classmethod
    def from_entity(cls, entity: db.Entity) -> TaskRecord:
        """The record an entity holds, as any version wrote it; :class:`InvalidRecord` if it holds nonsense."""
        task_id = entity.key.name
        if not isinstance(task_id, str):
            raise InvalidRecord(f"a task record's key must be the task id, not {entity.key.id_or_name!r}")
        read = _Reader(task_id, entity)
        stored = entity.get("state")
        state = _BY_VALUE.get(stored) if isinstance(stored, str) else None
        if state is None:
            raise InvalidRecord(f"task record {task_id}: unknown state {str(stored)[:40]!r}")
        tags = entity.get("tags")
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRecord(f"task record {task_id}: tags must be a list of strings")
        return cls(
            task_id, state, target=read.text("target"), queue=read.text("queue"), kind=read.text("kind"),
            attempts=read.count("attempts"), enqueued_at=read.time("enqueued_at"),
            started_at=read.time("started_at"), ended_at=read.time("ended_at"), updated_at=read.time("updated_at"),
            error=read.text("error"), error_type=read.text("error_type"), traceback=read.text("traceback"),
            result=read.text("result"), tags=list(tags), description=read.text("description"),
            group=read.text("group"), queue_task=read.text("queue_task"), eta=read.time("eta"),
            lease_until=read.time("lease_until"), expires_at=read.time("expires_at"), _entity=entity)

    def to_entity(self) -> db.Entity:
        """The entity to store (the one it was read from, updated: fields of other versions survive)."""
        entity = self._entity if self._entity is not None else db.Entity(record_key(self.id),
                                                                          exclude_from_indexes=_UNINDEXED)
        entity.update({
            "state": self.state.value, "target": self.target, "queue": self.queue, "kind": self.kind,
            "attempts": self.attempts, "enqueued_at": self.enqueued_at, "started_at": self.started_at,
            "ended_at": self.ended_at, "updated_at": self.updated_at, "error": self.error,
            "error_type": self.error_type, "traceback": self.traceback, "result": self.result,
            "tags": list(self.tags), "description": self.description, "group": self.group,
            "queue_task": self.queue_task, "eta": self.eta, "lease_until": self.lease_until,
            "expires_at": self.expires_at,
        })
        self._entity = entity
        return entity

    def save(self) -> None:
        db.put(self.to_entity())

    # --- what callers read --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Nothing more will run (a cancelled task whose attempt is still running counts as finished)."""
        return self.state in FINAL_STATES

    def value(self) -> Any:
        """The task's return value (``None`` until it succeeded)."""
        return decode_result(self.result)

    def __str__(self) -> str:
        return self.state.value

    # --- transitions --------------------------------------------------------------------------

    def _go(self, state: TaskState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"task {self.id} is {self.state}; it cannot become {state}")
        self.state = state

    def _end(self, state: TaskState, now: datetime.datetime) -> None:
        self._go(state)
        self.ended_at = self.updated_at = now
        self.lease_until = None

    def start(self, now: datetime.datetime, *, attempt: int, lease: datetime.timedelta) -> None:
        """An attempt starts and owns the task until ``now + lease``; ``attempt`` counts across self-scheduled tasks."""
        self.attempts = max(attempt, self.attempts + (1 if self.state is RUNNING else 0))
        self._go(RUNNING)
        self.started_at = self.updated_at = now
        self.ended_at = None
        self.lease_until = now + lease

    def succeed(self, now: datetime.datetime, result: str | None, ttl: datetime.timedelta) -> None:
        self._end(SUCCEEDED, now)
        self.result, self.error, self.error_type, self.traceback = result, None, None, None
        self.expires_at = now + ttl

    def fail(self, now: datetime.datetime, error: BaseException, ttl: datetime.timedelta) -> None:
        self._end(FAILED, now)
        self._set_error(error)
        self.expires_at = now + ttl

    def retry(self, now: datetime.datetime, error: BaseException, *, queue_task: str | None = None,
              eta: datetime.datetime | None = None) -> None:
        """The attempt failed and another one will come (the queue's, or ``queue_task`` at ``eta``, ours)."""
        self._go(RETRYING)
        self.updated_at, self.lease_until = now, None
        self._set_error(error)
        if queue_task is not None:
            self.queue_task, self.eta = queue_task, eta

    def wait(self, now: datetime.datetime, *, queue_task: str | None = None,
             eta: datetime.datetime | None = None) -> None:
        """The attempt found its lock held: not an attempt, not an error; another one will come."""
        self._go(RETRYING)
        self.attempts = max(self.attempts - 1, 0)
        self.updated_at, self.lease_until = now, None
        if queue_task is not None:
            self.queue_task, self.eta = queue_task, eta

    def cancel(self, now: datetime.datetime) -> None:
        """Revoke the task; a running attempt can't be stopped, so it ends the record when it returns."""
        running = self.state is RUNNING
        if running:
            self._go(CANCELLED)
            self.updated_at = now
        else:
            self._end(CANCELLED, now)

    def expire(self, now: datetime.datetime, ttl: datetime.timedelta) -> None:
        """The task's ``expires=`` moment passed before an attempt started: it ends without running."""
        self._end(EXPIRED, now)
        self.expires_at = now + ttl

    def settle_cancel(self, now: datetime.datetime) -> None:
        """End a task cancelled while an attempt ran, now that the attempt is over (or was refused)."""
        if self.state is not CANCELLED:
            raise InvalidTransition(f"task {self.id} is {self.state}, not cancelled")
        if self.ended_at is None:
            self.ended_at = now
        self.updated_at, self.lease_until = now, None

    def reopen(self, now: datetime.datetime) -> None:
        """Make an ended task runnable again (a person sends its dead letter again) with a fresh budget."""
        self._go(QUEUED)
        self.ended_at, self.lease_until, self.result, self.attempts = None, None, None, 0
        self.updated_at = now

    def _set_error(self, error: BaseException) -> None:
        self.error, self.error_type = error_text(error), type(error).__name__
        self.traceback = "".join(tb.format_exception(error))[-MAX_TRACEBACK_CHARS:]


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Typed reads of one stored record's properties; a wrong type is an :class:`InvalidRecord`."""

    task_id: str
    entity: db.Entity

    def _wrong(self, name: str, value: Any) -> InvalidRecord:
        return InvalidRecord(f"task record {self.task_id}: {name} holds a {type(value).__name__}")

    def text(self, name: str) -> str | None:
        value = self.entity.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong(name, value)

    def count(self, name: str) -> int:
        value = self.entity.get(name)
        if value is None:
            return 0
        if type(value) is not int or not 0 <= value < db.INT64_MAX // 2:
            raise self._wrong(name, value)
        return value

    def time(self, name: str) -> datetime.datetime | None:
        value = self.entity.get(name)
        if value is None:
            return None
        if not isinstance(value, datetime.datetime):
            raise self._wrong(name, value)
        return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


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
