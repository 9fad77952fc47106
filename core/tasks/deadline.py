"""A task's own deadline (``timeout=``): never two runs of one queued task at once because of it.

A queue gives a push ``timeout`` seconds (its dispatch deadline); a task still working then is
taken as failed by the queue, which pushes it again while the first run goes on. So a task with
``timeout=`` claims its queued task (the queue's task name) for the life of the run, in a small
Datastore entity whose claim a heartbeat keeps alive: a push that finds the claim alive is
answered 409 without running (the queue comes back later), one that finds the run ended well is
answered 200 without running, and one that finds the claim stale (its process died) runs. The
running task reads its deadline with :func:`current_deadline`; a run that overran it is logged
and recorded as such on the claim (``overran_by``, seconds).
"""
from __future__ import annotations

import contextvars
import datetime
import logging
from typing import Any

from core import db
from core.clock import utc_now
from core.tasks import lease, message
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import PayloadError

log = logging.getLogger(__name__)

CLAIM_KIND = "_tasks_run_claim"
#: The payload field of a task with ``timeout=``: its seconds.
FIELD = "timeout"
#: A claim not stamped for this long belongs to a run whose process died.
CLAIM_STALE = datetime.timedelta(seconds=30)
#: How long a claim of a run that ended well is kept (later pushes of it are answered 200); the
#: hourly housekeeping deletes older ones.
CLAIM_KEPT = datetime.timedelta(days=1)

_deadline: contextvars.ContextVar[datetime.datetime | None] = contextvars.ContextVar("core_task_deadline",
                                                                                      default=None)


def current_deadline() -> datetime.datetime | None:
    """When the running task's ``timeout=`` ends (its start plus the timeout), or ``None`` without one."""
    return _deadline.get()


#: The longest ``timeout=`` a task may carry (App Engine targets' longest dispatch deadline).
MAX_TIMEOUT = datetime.timedelta(hours=24)


def timeout_of(envelope: message.Envelope) -> datetime.timedelta | None:
    """The task's ``timeout=`` (``None``: it has none); a signed payload with a malformed one is a
    :class:`PayloadError` (a dead letter), never a crash."""
    timeout = envelope.payload.get(FIELD) if isinstance(envelope.payload, dict) else None
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout <= MAX_TIMEOUT.total_seconds():
        raise PayloadError(f"malformed timeout in the task's payload: {str(timeout)[:40]}")
    return datetime.timedelta(seconds=timeout)


def _count(payload: dict[str, Any], field: str) -> int | None:
    value = payload.get(field)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < db.INT64_MAX:
        raise PayloadError(f"malformed {field} in the task's payload")
    return value


def claim_key(envelope: message.Envelope, info: TaskInfo) -> db.Key:
    """The claim of one queued task: the queue's name of it (the same on every push of it)."""
    if info.task_name:
        name = f"{info.queue or envelope.queue}:{info.task_name}"
    else:
        payload = envelope.payload if isinstance(envelope.payload, dict) else {}
        name = f"{envelope.id}:{_count(payload, 'attempt')}:{_count(payload, 'lock_waits')}"
    return db.key(CLAIM_KIND, name[:1400])


def claim(key: db.Key) -> str:
    """In a transaction: ``"run"`` (claimed now), ``"busy"`` (a run is alive) or ``"done"`` (it ended well)."""
    def take() -> str:
        now = utc_now()
        entity = db.get(key)
        if entity is not None and entity.get("done"):
            return "done"
        alive_at = entity.get("alive_at") if entity is not None else None
        if isinstance(alive_at, datetime.datetime) and alive_at > now - CLAIM_STALE:
            return "busy"
        fresh = db.Entity(key, exclude_from_indexes=("started", "alive_at", "overran_by"))
        fresh.update({"started": now, "alive_at": now, "done": False, "overran_by": None,
                      "expires_at": now + CLAIM_KEPT})
        db.put(fresh)
        return "run"

    return db.run_in_transaction(take)  # type: ignore[no-any-return]


def _end(key: db.Key, done: bool, overran_by: float | None) -> None:
    if not done:
        db.delete(key)
        return
    entity = db.Entity(key, exclude_from_indexes=("started", "alive_at", "overran_by"))
    now = utc_now()
    entity.update({"alive_at": now, "done": True, "overran_by": overran_by, "expires_at": now + CLAIM_KEPT})
    db.put(entity)


class Claimed:
    """One run that holds its claim: :meth:`start` it, then :meth:`end` it as done or released."""

    def __init__(self, key: db.Key, timeout: datetime.timedelta, what: str) -> None:
        self.key, self.timeout, self.what = key, timeout, what
        self.started = utc_now()
        self._heartbeat = lease.Heartbeat(lease.stamper(key, "alive_at", lambda e: not e.get("done")),
                                          CLAIM_STALE.total_seconds() / 3, what=what)

    def start(self) -> None:
        """The deadline becomes readable and the heartbeat keeps the claim alive."""
        self._token = _deadline.set(self.started + self.timeout)
        self._heartbeat.start()

    def end(self, done: bool) -> None:
        """Keep the claim as ``done`` (later pushes are answered 200) or release it for the queue's retry."""
        self._heartbeat.stop()
        _deadline.reset(self._token)
        elapsed = utc_now() - self.started
        overran_by = (elapsed - self.timeout).total_seconds() if elapsed > self.timeout else None
        if overran_by is not None:
            log.warning("%s overran its timeout of %g s by %.3g s", self.what, self.timeout.total_seconds(),
                        overran_by)
        try:
            _end(self.key, done, overran_by)
        except Exception:
            log.exception("%s: could not record the end of its run", self.what)


def purge_expired(limit: int = 500) -> int:
    """Delete claims kept past :data:`CLAIM_KEPT`; returns how many."""
    keys = [e.key for e in db.Query(CLAIM_KIND).filter("expires_at <", utc_now()).keys_only().run(limit=limit)]
    if keys:
        db.delete(keys)
    return len(keys)
