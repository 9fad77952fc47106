"""Progress from inside a running task: ``report_progress(done, total=None, note=None)``.

A long task tells how far it got (Celery's ``update_state``, our QueryIter's progress bar); its
handle reads it (:meth:`TaskHandle.progress`) and the tracked tasks page draws it as a bar with rate
and ETA. It is kept on the task's record, so a tracked task's progress is what is stored; for an
untracked task a report is a no-op (nothing to keep it on), logged once at debug level.

Writes are bounded: at most one per :data:`MIN_INTERVAL` seconds per task (the first report, and
the one that reaches ``total``, are always written), each one read-and-write of the record in a
transaction, so a loop reporting after every item costs no more than a write a second.
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import time
from typing import Any

from core import db
from core.clock import utc_now
from core.tasks.records import record_key

log = logging.getLogger(__name__)

#: Seconds between two stored reports of one task.
MIN_INTERVAL = 1.0
#: The record's properties that hold progress (other code leaves them as they are).
FIELDS = ("progress_done", "progress_total", "progress_note", "progress_at", "progress_since",
          "progress_since_done")
_NOTE_CHARS = 300

#: The id of the task running in this context (set by the pipeline around the run).
running: contextvars.ContextVar[str | None] = contextvars.ContextVar("core_running_task", default=None)
#: ``(task id, monotonic time of the last stored report)`` of this context.
_last: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar("core_progress_mark", default=None)


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a task got: ``done`` of ``total`` (``None``: unknown), with a note, and how fast."""

    done: int
    total: int | None
    note: str | None
    at: datetime.datetime
    #: When, and at what count, the first report was stored (the rate counts from there).
    since: datetime.datetime
    since_done: int

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @property
    def rate(self) -> float | None:
        """Items a second, from the first report to the last."""
        seconds = (self.at - self.since).total_seconds()
        return (self.done - self.since_done) / seconds if seconds > 0 and self.done > self.since_done else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until ``total`` at the rate so far."""
        rate = self.rate
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def to_json(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "note": self.note, "at": self.at.isoformat(),
                "fraction": self.fraction, "rate": self.rate, "eta_seconds": self.eta_seconds}


def report_progress(done: int, total: int | None = None, note: str | None = None) -> bool:
    """Tell how far the running task got; whether this report was stored (see the module's docstring).

    ``done`` and ``total`` are counts (``total`` may be unknown); a ``TypeError`` / ``ValueError``
    says what is wrong with them. Outside a task it raises ``RuntimeError``.
    """
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise ValueError(f"report_progress(done=...) must be a count >= 0, got {done!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"report_progress(total=...) must be a count >= 0 or None, got {total!r}")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"report_progress(note=...) must be a string, got {type(note).__name__}")
    task_id = running.get()
    if task_id is None:
        raise RuntimeError("report_progress() is called from inside a running task")
    now = time.monotonic()
    last = _last.get()
    final = total is not None and done >= total
    if last is not None and last[0] == task_id and now - last[1] < MIN_INTERVAL and not final:
        return False
    _last.set((task_id, now))
    return bool(db.run_in_transaction(_store, task_id, done, total, note))


def _store(task_id: str, done: int, total: int | None, note: str | None) -> bool:
    record = db.get(record_key(task_id))
    if record is None:
        log.debug("task %s is not tracked: its progress is not kept", task_id)
        return False
    now = utc_now()
    if record.get("progress_since") is None:
        record.update({"progress_since": now, "progress_since_done": done})
    record.update({"progress_done": done, "progress_total": total,
                   "progress_note": note[:_NOTE_CHARS] if note is not None else None, "progress_at": now})
    record.exclude_from_indexes = set(record.exclude_from_indexes) | {"progress_note"}
    db.put(record)
    return True


def read(entity: db.Entity | None) -> Progress | None:
    """The progress a record entity holds, or ``None`` (none reported, or not readable)."""
    if entity is None:
        return None
    done, at, since = entity.get("progress_done"), entity.get("progress_at"), entity.get("progress_since")
    if type(done) is not int or not isinstance(at, datetime.datetime) or not isinstance(since, datetime.datetime):
        return None
    total, note = entity.get("progress_total"), entity.get("progress_note")
    since_done = entity.get("progress_since_done")
    return Progress(done=done, total=total if type(total) is int else None,
                    note=note if isinstance(note, str) else None, at=at, since=since,
                    since_done=since_done if type(since_done) is int else done)
