"""Unique tasks: ``@callDeferred(unique=True)``, ``unique_for=``, ``unique_key=``; per call ``_unique``.

At most one pending or running task per target and key. The key is the call's arguments, bound
to the function's signature (defaults applied) and encoded by ``core.json`` (deterministic), or
what ``unique_key(*args, **kwargs)`` returns, or a ``_unique="..."`` string given at the call.

A *claim* (kind :data:`CLAIM_KIND`, key name: a hash of target and key) names the task that holds
the key. The call reads the claim and, if it is free, writes it together with the task in one
Datastore transaction (the outbox makes the send part of it), so concurrent callers on any number
of instances queue exactly one task; the others get a :class:`TaskHandle` of that task. A unique
task is always tracked: its record tells a pending or running copy from one that ended, so a
claim whose task succeeded, failed for good, was cancelled or expired is free whatever happened
to it. The :func:`step` middleware, around the lifecycle, deletes the claim once its task has
ended there; ``unique_for`` frees a claim after that long in any case (a safety net).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from core import db
from core import json as tagged_json
from core.tasks import records
from core.tasks.errors import ConfigurationError, PayloadError
from core.tasks.outcome import Outcome
from core.tasks.pipeline import Delivery, Proceed
from core.tasks.runtime import TaskRuntime
from core.tasks.task_handle import TaskHandle

log = logging.getLogger(__name__)

CLAIM_KIND = "_tasks_unique"
#: The payload field naming the task's claim (its key name), so the run side can free it.
FIELD = "unique"
#: Transaction attempts of a claim: many callers of one key collide, and each must get an answer.
CLAIM_RETRIES = 12
#: Characters of the key kept on the claim for people (the claim's name is its hash).
_KEY_TEXT_CHARS = 300
#: A claim is only ever read by its key: none of its properties needs an index write.
_UNINDEXED = ("task", "target", "key", "queue", "queue_task", "created", "until")


@dataclasses.dataclass(frozen=True)
class UniqueSpec:
    """A target's uniqueness: its key function (``None``: the arguments) and its safety-net hold."""

    key: Callable[..., Any] | None = None
    hold_for: datetime.timedelta | None = None


def unique_spec(unique: Any, unique_for: Any, unique_key: Any, what: str) -> UniqueSpec | None:
    """Check ``unique=``, ``unique_for=`` and ``unique_key=`` at decoration; ``None``: not unique."""
    if not isinstance(unique, bool):
        raise ConfigurationError(f"{what}: unique must be True or False, got {unique!r}")
    if isinstance(unique_for, (int, float)) and not isinstance(unique_for, bool):
        unique_for = datetime.timedelta(seconds=unique_for)
    if unique_for is not None and (not isinstance(unique_for, datetime.timedelta)
                                   or unique_for <= datetime.timedelta(0)):
        raise ConfigurationError(f"{what}: unique_for must be a positive number of seconds or timedelta, "
                                 f"got {unique_for!r}")
    if unique_key is not None and not callable(unique_key):
        raise ConfigurationError(f"{what}: unique_key must be a callable taking the task's arguments, "
                                 f"got {unique_key!r}")
    if not unique and unique_for is None:
        if unique_key is not None:
            raise ConfigurationError(f"{what}: unique_key= needs unique=True or unique_for=")
        return None
    return UniqueSpec(unique_key, unique_for)


@dataclasses.dataclass(frozen=True)
class UniqueCall:
    """One call of a unique task: its claim's name and key, and the target's spec."""

    spec: UniqueSpec
    name: str
    key: str

    @classmethod
    def of(cls, spec: UniqueSpec, scope: str, func: Callable[..., Any], bound: tuple[Any, ...],
           args: tuple[Any, ...], kwargs: dict[str, Any], option: Any) -> UniqueCall:
        """The call's claim; ``scope`` is what is unique besides the key (the target, with its instance)."""
        key = key_of(spec, func, bound, args, kwargs, option)
        return cls(spec, claim_name(scope, key), key)


def key_of(spec: UniqueSpec, func: Callable[..., Any], bound: tuple[Any, ...], args: tuple[Any, ...],
           kwargs: dict[str, Any], option: Any) -> str:
    """The call's unique key as text (``option`` is ``_unique``: a string is the key itself)."""
    if isinstance(option, str):
        return option
    if spec.key is not None:
        value = spec.key(*args, **kwargs)
        return value if isinstance(value, str) else tagged_json.dumps(value, path="unique_key()")
    try:
        call = inspect.signature(func).bind(*bound, *args, **kwargs)
    except TypeError:  # the call's argument check names the misfit; the key need not
        return tagged_json.dumps({"args": list(args), "kwargs": kwargs}, path="args")
    call.apply_defaults()
    arguments = dict(list(call.arguments.items())[len(bound):])
    return tagged_json.dumps(arguments, path="args")


def claim_name(scope: str, key: str) -> str:
    """The claim's key name: a hash of what is unique (``scope``: the target, and instance for methods) and key."""
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()


def claim_key(name: str) -> db.Key:
    return db.key(CLAIM_KIND, name)


def _ended(record: records.TaskRecord | None) -> bool:
    """The task will not run again (a cancelled one once its running attempt, if any, is over)."""
    if record is None:
        return True
    return record.finished and (record.state is not records.CANCELLED or record.ended_at is not None)


def _record_of(task_id: Any) -> records.TaskRecord | None:
    try:
        return records.TaskRecord.fetch(str(task_id))
    except records.InvalidRecord:
        log.exception("the record of unique task %s cannot be read; its key is taken as free", task_id)
        return None


def send_once(runtime: TaskRuntime, call: UniqueCall, *, target: str, send: Callable[[], TaskHandle]) -> TaskHandle:
    """Send the task with ``send()`` unless its claim is held; the holder's handle if it is."""
    now = runtime.clock.now()
    name, key, hold_for = call.name, call.key, call.spec.hold_for

    def claim() -> TaskHandle:
        held = db.get(claim_key(name))
        if held is not None:
            until = held.get("until")
            if (until is None or until > now) and not _ended(_record_of(held.get("task"))):
                return TaskHandle(str(held["task"]), str(held.get("queue") or ""), tracked=True,
                                  queue_task=held.get("queue_task"))
        handle = send()
        entity = db.Entity(claim_key(name), exclude_from_indexes=_UNINDEXED)
        entity.update({"task": handle.id, "target": target, "key": key[:_KEY_TEXT_CHARS], "queue": handle.queue,
                       "queue_task": handle.queue_task, "created": now,
                       "until": now + hold_for if hold_for is not None else None})
        db.put(entity)
        return handle

    return db.run_in_transaction(claim, retries=CLAIM_RETRIES)


def release(name: str, task_id: str) -> bool:
    """In a transaction: delete the claim ``name`` if ``task_id`` holds it and has ended; ``True`` if deleted."""
    def free() -> bool:
        held, stored = db.get([claim_key(name), records.record_key(task_id)])
        if held is None or held.get("task") != task_id:
            return False
        try:
            record = records.TaskRecord.from_entity(stored) if stored is not None else None
        except records.InvalidRecord:
            record = None
        if not _ended(record):
            return False
        db.delete(held.key)
        return True

    return db.run_in_transaction(free)


def step(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The pipeline's ``unique`` middleware: after the rest, free the task's claim if the task ended."""
    envelope = delivery.envelope
    payload = envelope.payload if envelope is not None and delivery.cron is None else None
    name = payload.get(FIELD) if isinstance(payload, dict) else None
    if name is None:
        return proceed(delivery)
    if not isinstance(name, str) or len(name) != 64:
        raise PayloadError(f"a task's {FIELD!r} must name its claim, not {type(name).__name__}")
    assert envelope is not None
    try:
        return proceed(delivery)
    finally:
        try:
            release(name, envelope.id)
        except Exception:  # the next call finds the task ended and takes the claim over anyway
            log.exception("could not free the unique claim of task %s", envelope.id)
