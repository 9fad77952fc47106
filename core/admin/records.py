"""Task records as the Tasks page shows them: the query behind the filters, and safe descriptions.

Records (kind :data:`RECORD_KIND`, key name = task id) are written by the task pipeline for tracked
tasks and read here as :class:`~core.tasks.records.TaskRecord`. A record that does not read as one
(written by hand, or by a version that stored something else) is still shown as well as it can
be and never makes the page fail.
"""
from __future__ import annotations

import datetime
from typing import Any

from core import db
from core.clock import utc_now
from core.tasks import progress
from core.tasks.records import FAILED, RECORD_KIND, STATES, InvalidRecord, TaskRecord

#: States whose task may still run, so cancelling means something.
CANCELLABLE = tuple(state for state in STATES if state.value in ("queued", "running", "retrying"))
#: States from which the Retry button sends the task again (from its dead letter).
RETRYABLE = (FAILED,)
#: The property the list is ordered by (newest first); each filter is an equality on one property.
ORDER = "-enqueued_at"
FILTERS = ("state", "queue", "target", "tag")
_TEXT_LIMIT = 300
_MAX_INT = 10**15


def record_query(filters: dict[str, str]) -> db.Query:
    """Records matching the filters (equalities, each one served with the ``enqueued_at`` index)."""
    query = db.Query(RECORD_KIND)
    for name in FILTERS:
        value = filters.get(name)
        if value:
            query.filter("tags" if name == "tag" else name, "=", value)
    return query.order(ORDER)


def text(value: Any, limit: int = _TEXT_LIMIT) -> str:
    """Any stored value as display text, shortened; never raises (even for ints too long for ``str``)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        shown = value if isinstance(value, str) else str(value)
    except Exception:
        shown = f"<{type(value).__name__} that cannot be shown>"
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def number(value: Any) -> int | None:
    """A stored count, or ``None`` when it is not a plausible integer."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= _MAX_INT:
        return None
    return value


def moment(value: Any) -> datetime.datetime | None:
    """A stored time as an aware UTC datetime, or ``None``."""
    if not isinstance(value, datetime.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def duration(start: datetime.datetime | None, end: datetime.datetime | None,
             now: datetime.datetime) -> float | None:
    """Seconds from start to end (to ``now`` while unfinished); ``None`` before it started."""
    if start is None:
        return None
    return max(0.0, ((end or now) - start).total_seconds())


def _progress(entity: db.Entity) -> dict[str, Any] | None:
    reported = progress.read(entity)
    return None if reported is None else reported.to_json()


def describe_record(entity: db.Entity, now: datetime.datetime | None = None) -> dict[str, Any]:
    """A record for the page and its JSON."""
    now = now or utc_now()
    try:
        record = TaskRecord.from_entity(entity)
    except InvalidRecord:
        return _describe_unreadable(entity, now)
    return {
        "id": text(record.id, 500), "state": record.state.value, "target": text(record.target),
        "queue": text(record.queue, 100), "kind": text(record.kind, 40), "attempts": number(record.attempts),
        "enqueued_at": record.enqueued_at, "started_at": record.started_at, "ended_at": record.ended_at,
        "updated_at": record.updated_at, "progress": _progress(entity),
        "duration": duration(record.started_at, record.ended_at if record.state not in CANCELLABLE else None, now),
        "error": text(record.error), "error_type": text(record.error_type, 200),
        "traceback": text(record.traceback, 20_000), "result": text(record.result),
        "tags": [text(t, 60) for t in record.tags], "description": text(record.description),
        "group": text(record.group, 200),
        "cancellable": record.state in CANCELLABLE, "retryable": record.state in RETRYABLE,
    }


def _describe_unreadable(entity: db.Entity, now: datetime.datetime) -> dict[str, Any]:
    """A record that does not read as a :class:`TaskRecord`: each value shown as well as it can be."""
    state = text(entity.get("state"), 20) or "unknown"
    state = state if state in STATES else "unknown"
    started, ended = moment(entity.get("started_at")), moment(entity.get("ended_at"))
    tags = entity.get("tags")
    return {
        "id": text(entity.key.id_or_name, 500), "state": state,
        "target": text(entity.get("target")), "queue": text(entity.get("queue"), 100),
        "kind": text(entity.get("kind"), 40), "attempts": number(entity.get("attempts")),
        "enqueued_at": moment(entity.get("enqueued_at")), "started_at": started, "ended_at": ended,
        "updated_at": moment(entity.get("updated_at")),
        "duration": duration(started, ended if state not in CANCELLABLE else None, now),
        "error": text(entity.get("error")), "error_type": text(entity.get("error_type"), 200),
        "traceback": text(entity.get("traceback"), 20_000), "result": text(entity.get("result")),
        "tags": [text(t, 60) for t in tags] if isinstance(tags, list) else [],
        "description": text(entity.get("description")), "group": text(entity.get("group"), 200),
        # Cancelling reads the record as a TaskRecord, which this one is not; retrying sends its dead letter.
        "cancellable": False, "retryable": state in RETRYABLE,
    }


def format_duration(seconds: Any) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``—`` for nothing."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 10**9:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return "—"
