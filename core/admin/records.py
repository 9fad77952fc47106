"""Task records as the Tasks page shows them: the query behind the filters, and safe descriptions.

Records (kind :data:`RECORD_KIND`, key name = task id) are written by the task pipeline for tracked
tasks. Every value is read defensively: a record written by an older or newer version, or edited
by hand, is shown as well as it can be and never makes the page fail.
"""
from __future__ import annotations

import datetime
from typing import Any

from core import db
from core.clock import utc_now

RECORD_KIND = "_tasks_record"
STATES = ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
#: States whose task may still run, so cancelling means something.
CANCELLABLE = ("queued", "running", "retrying")
#: States from which the Retry button sends the task again (from its dead letter).
RETRYABLE = ("failed",)
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


def describe_record(entity: db.Entity, now: datetime.datetime | None = None) -> dict[str, Any]:
    """A record for the page and its JSON."""
    now = now or utc_now()
    state = text(entity.get("state"), 20) or "unknown"
    started, ended = moment(entity.get("started_at")), moment(entity.get("ended_at"))
    tags = entity.get("tags")
    return {
        "id": text(entity.key.id_or_name, 500), "state": state if state in STATES else "unknown",
        "target": text(entity.get("target")), "queue": text(entity.get("queue"), 100),
        "kind": text(entity.get("kind"), 40), "attempts": number(entity.get("attempts")),
        "enqueued_at": moment(entity.get("enqueued_at")), "started_at": started, "ended_at": ended,
        "updated_at": moment(entity.get("updated_at")),
        "duration": duration(started, ended if state not in CANCELLABLE else None, now),
        "error": text(entity.get("error")), "error_type": text(entity.get("error_type"), 200),
        "traceback": text(entity.get("traceback"), 20_000), "result": text(entity.get("result")),
        "tags": [text(t, 60) for t in tags] if isinstance(tags, list) else [],
        "description": text(entity.get("description")), "group": text(entity.get("group"), 200),
        "cancellable": state in CANCELLABLE, "retryable": state in RETRYABLE,
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
