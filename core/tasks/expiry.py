"""Expiry: ``@callDeferred(expires=...)`` and per call ``_expires``: a task not started by then never runs.

The moment is fixed at the call (a duration from the app's clock, or an aware datetime) and
travels in the task's signed payload as unix seconds (:data:`FIELD`), so every delivery, retry
and self-scheduled attempt carries the same one. The :func:`step` middleware, just before the
lifecycle, answers a delivery at or past it with 2xx and ``skipped`` (counted so in the metrics),
never a failure, retry or dead letter. A tracked task's record ends ``expired`` in the same
step (one transaction); an untracked one is simply dropped, at no Datastore cost. A task whose
record is already running or ended goes on to the lifecycle, which answers it as it always does.
"""
from __future__ import annotations

import datetime
import logging
import math
from typing import Any

from core import db
from core.tasks import records
from core.tasks.errors import PayloadError
from core.tasks.outcome import Outcome
from core.tasks.pipeline import Delivery, Proceed

log = logging.getLogger(__name__)

#: The payload field holding the moment (unix seconds) after which the task is not started.
FIELD = "expires"


def check_expires(value: Any, what: str) -> datetime.timedelta | datetime.datetime | None:
    """``expires=`` as given at decoration or call: a positive duration (seconds or timedelta) or an aware datetime."""
    if value is None or isinstance(value, datetime.datetime):
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            raise ValueError(f"{what}: an expires datetime must be timezone-aware, got {value!r}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        value = datetime.timedelta(seconds=value)
    if not isinstance(value, datetime.timedelta) or value <= datetime.timedelta(0):
        raise ValueError(f"{what}: expires must be a positive number of seconds, a timedelta or an aware "
                         f"datetime, got {value!r}")
    return value


def expiry_moment(expires: datetime.timedelta | datetime.datetime | None,
                  now: datetime.datetime) -> float | None:
    """The payload value of a checked ``expires`` for a task sent ``now`` (``None``: never expires)."""
    if expires is None:
        return None
    moment = now + expires if isinstance(expires, datetime.timedelta) else expires
    return moment.timestamp()


def moment_of(payload: Any) -> float | None:
    """The expiry moment a payload carries; a malformed one is a :class:`PayloadError` (a dead letter)."""
    value = payload.get(FIELD) if isinstance(payload, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"a task's {FIELD!r} must be unix seconds, not {type(value).__name__}")
    return float(value)


def expire_record(task_id: str, now: datetime.datetime, ttl: datetime.timedelta) -> records.TaskState | None:
    """In a transaction: end a queued or retrying record ``expired``; returns its state after (``None``: no record)."""
    def apply() -> records.TaskState | None:
        record = records.TaskRecord.fetch(task_id)
        if record is None:
            return None
        if records.EXPIRED in records.TRANSITIONS[record.state]:
            record.expire(now, ttl)
            record.save()
        return record.state

    return db.run_in_transaction(apply)


def step(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The pipeline's ``expiry`` middleware (see the module's docstring)."""
    envelope = delivery.envelope
    if delivery.cron is not None or envelope is None:
        return proceed(delivery)
    moment = moment_of(envelope.payload)
    runtime = delivery.runtime
    now = runtime.clock.now()
    if moment is None or now.timestamp() < moment:
        return proceed(delivery)
    if envelope.payload.get("track") is True:
        state = expire_record(envelope.id, now, datetime.timedelta(seconds=runtime.settings.tasks_result_ttl))
        if state not in (None, records.EXPIRED):
            return proceed(delivery)  # it started before (running or ended): the lifecycle answers it
    when = datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat()
    text = f"expired at {when}; not run"
    log.info("task %s (%s) %s", envelope.id, delivery.target, text)
    return delivery.outcome(200, text, skipped=text)
