"""Debounced tasks: ``@callDeferred(debounce=timedelta(seconds=2))`` runs once, after the last call.

Calls of one target (and ``debounce_key``, a template filled from the call's arguments like
``lock=``; without it the target alone) within the window collapse into one run, with the last
call's arguments, ``window`` after that last call (the trailing edge), whichever instances made
the calls.

How: each call writes the debounce entity of its key (kind :data:`DEBOUNCE_KIND`) naming itself
the latest call, and sends its task scheduled ``window`` ahead, both in one Datastore transaction
(the task goes through the outbox: it exists if and only if the mark does). When a task comes due,
the :func:`skip_superseded` middleware reads the entity: a task that is no longer the latest call
is answered 200 as *superseded* (not run, not an attempt, not a failure; a tracked one's record
ends ``cancelled``); the latest one runs and, once it succeeded, deletes the entity if no call came
since. The last writer wins, so of calls made at once on several instances exactly the one
committed last runs. A superseded tracked task costs one more transaction (its record's end).

Cost per call: a transaction that only writes (begun, then one commit of the mark and the outbox
entry), the enqueue and the outbox entry's delete after it; per task: one lookup; the run of the
latest adds one transaction (a lookup and a commit of the delete).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from core import db
from core.clock import utc_now
from core.tasks import message, records
from core.tasks.errors import ConfigurationError, PayloadError
from core.tasks.locks import check_template, fill_template
from core.tasks.outcome import Outcome
from core.tasks.pipeline import Delivery, Proceed
from core.tasks.transports.base import MAX_SCHEDULE_AHEAD

__all__ = ["DEBOUNCE_KIND", "DebounceSpec", "DebouncedCall", "debounce_spec", "debounced_call", "skip_superseded"]

DEBOUNCE_KIND = "_tasks_debounce"
#: The payload field of a debounced call: its key and call token.
FIELD = "debounce"
#: Debounce keys longer than this are stored under a hash (Datastore key names stop at 1500 bytes).
MAX_KEY_CHARS = 400
#: Why a superseded task is answered without running.
SUPERSEDED = "superseded by a later call within its debounce window"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DebounceSpec:
    """A task's debounce: its window and the template of its key (``None``: the target alone)."""

    window: datetime.timedelta
    key: str | None = None


@dataclasses.dataclass(frozen=True)
class DebouncedCall:
    """One call of a debounced task: its key's name, its own token and its window."""

    key: str
    token: str
    window: datetime.timedelta

    def marker(self) -> dict[str, str]:
        """What the task's payload carries to be told apart from later calls."""
        return {"key": self.key, "call": self.token}


def window_of(value: Any, what: str, error: type[Exception] = ConfigurationError) -> datetime.timedelta:
    """A debounce window (seconds or a timedelta): positive and at most 30 days (Cloud Tasks' horizon)."""
    window = value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        window = datetime.timedelta(seconds=value)
    if not isinstance(window, datetime.timedelta) or not datetime.timedelta(0) < window <= MAX_SCHEDULE_AHEAD:
        raise error(f"{what}: debounce must be a positive number of seconds or timedelta of at most 30 days, "
                    f"got {value!r}")
    return window


def debounce_spec(debounce: Any, debounce_key: str | None, func: Callable[..., Any],
                  name: str) -> DebounceSpec | None:
    """Check ``debounce=`` and ``debounce_key=`` of a task at decoration."""
    if debounce is None:
        if debounce_key is not None:
            raise ConfigurationError(f"{name}: debounce_key= needs debounce=")
        return None
    window = window_of(debounce, name)
    if debounce_key is not None:
        if not isinstance(debounce_key, str) or not debounce_key:
            raise ConfigurationError(f"{name}: debounce_key must be a non-empty name template, got {debounce_key!r}")
        check_template(debounce_key, func, name, option="debounce_key")
    return DebounceSpec(window, debounce_key)


def debounced_call(spec: DebounceSpec | None, per_call: Any, func: Callable[..., Any], name: str,
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> DebouncedCall | None:
    """The debounce of one call (``per_call``: its ``_debounce``, over the task's own), or ``None``."""
    if per_call is not None:
        window = window_of(per_call, f"{name}(_debounce=...)", ValueError)
        template = spec.key if spec is not None else None
    elif spec is not None:
        window, template = spec.window, spec.key
    else:
        return None
    key = name
    if template is not None:
        key += "|" + fill_template(template, func, name, args, kwargs, option="debounce_key")
    return DebouncedCall(key, uuid.uuid4().hex, window)


def _entity_key(key: str) -> db.Key:
    if len(key) > MAX_KEY_CHARS:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return db.key(DEBOUNCE_KIND, key)


def send_latest(call: DebouncedCall, sending: Callable[[], T]) -> T:
    """Mark ``call`` the latest of its key and send its task (``sending``), in one transaction."""
    def mark_and_send() -> T:
        entity = db.Entity(_entity_key(call.key), exclude_from_indexes=("key",))
        entity.update({"key": call.key, "latest": call.token, "at": utc_now()})
        db.put(entity)  # no read: the last commit is the last call
        return sending()

    return db.run_in_transaction(mark_and_send)


def _marker_of(payload: Any) -> tuple[str, str] | None:
    marker = payload.get(FIELD) if isinstance(payload, dict) else None
    if marker is None:
        return None
    key, token = (marker.get("key"), marker.get("call")) if isinstance(marker, dict) else (None, None)
    if not (isinstance(key, str) and key and isinstance(token, str) and token):
        raise PayloadError("malformed debounce marker")
    return key, token


def _forget(key: str, token: str) -> None:
    """After the latest call ran: delete its key's entity unless a later call came meanwhile."""
    def drop() -> None:
        entity = db.get(_entity_key(key))
        if entity is not None and entity.get("latest") == token:
            db.delete(entity.key)

    db.run_in_transaction(drop)


def skip_superseded(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Middleware: a debounced task that is not its key's latest call is answered 200 unrun."""
    envelope = delivery.envelope
    marked = _marker_of(envelope.payload) if envelope is not None else None
    if marked is None or envelope is None:
        return proceed(delivery)
    key, token = marked
    entity = db.get(_entity_key(key))
    if entity is None or entity.get("latest") != token:
        message.delete_stored(envelope)  # it never runs: its stored payload is of no use
        if envelope.payload.get("track") is True:
            records.cancel(envelope.id)  # its record ends (its handle's result() stops waiting)
        return delivery.outcome(200, SUPERSEDED, skipped=SUPERSEDED)
    outcome = proceed(delivery)
    if outcome.ran:
        _forget(key, token)
    return outcome
