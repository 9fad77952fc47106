"""Leases in Datastore that live while the work runs: held by one holder, renewed, released.

A lease is one entity (kind :data:`LEASE_KIND`) naming its holder and when it expires. It is
taken in a transaction, so of two processes asking at once one gets it. While the work runs a
:class:`Heartbeat` renews it from a background thread; the holder releases it at the end, also
when the work fails. A holder that dies stops renewing, and its lease expires after its duration:
the next one asking takes it over.

Expiry is judged by the app's clock in the process asking (:func:`core.clock.utc_now`; Datastore
has no server time): keep lease durations far above the clock skew between instances (seconds
suit tests only). A test advances that clock to expire a dead holder's lease.

:class:`Heartbeat` alone keeps any other claim alive (a periodic run's claim, a query
iterator's finish): it calls a function every few seconds until the work ends.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType

from core import db
from core.clock import utc_now
from core.tasks.errors import LockHeld

log = logging.getLogger(__name__)

LEASE_KIND = "_tasks_lease"
#: Lease names longer than this are stored under a hash (Datastore key names stop at 1500 bytes).
MAX_NAME_CHARS = 400
#: A lease is renewed this many times per duration: a late heartbeat or two does not lose it.
RENEWALS_PER_LEASE = 3


def lease_key(name: str) -> db.Key:
    """The entity key of lease ``name``: the name itself, or a hash of a long one."""
    if len(name) > MAX_NAME_CHARS:
        name = "sha256:" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return db.key(LEASE_KIND, name)


@dataclasses.dataclass
class Lease:
    """One holder's claim on lease ``name``, for ``duration`` after each acquire or renew."""

    name: str
    duration: datetime.timedelta
    holder: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    #: When the lease runs out unless renewed (set by a successful acquire or renew).
    expires_at: datetime.datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a lease needs a non-empty name, got {self.name!r}")
        if self.duration <= datetime.timedelta(0):
            raise ValueError(f"lease {self.name!r}: the duration must be positive, got {self.duration}")

    @property
    def key(self) -> db.Key:
        return lease_key(self.name)

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; ``False`` if someone holds it."""
        def take() -> datetime.datetime | None:
            now = utc_now()
            entity = db.get(self.key)
            if entity is not None and entity.get("holder") != self.holder and entity["expires_at"] > now:
                return None
            expires = now + self.duration
            fresh = db.Entity(self.key, exclude_from_indexes=("name",))
            fresh.update({"name": self.name, "holder": self.holder, "acquired_at": now, "renewed_at": now,
                          "expires_at": expires})
            db.put(fresh)
            return expires

        try:
            expires = db.run_in_transaction(take)
        except db.TransactionFailedError:
            return False  # others kept colliding on it: one of them holds it
        if expires is None:
            return False
        self.expires_at = expires
        return True

    def renew(self) -> bool:
        """Extend the lease by its duration from now; ``False`` if it is no longer ours."""
        def extend() -> datetime.datetime | None:
            entity = db.get(self.key)
            if entity is None or entity.get("holder") != self.holder:
                return None
            now = utc_now()
            entity.update({"renewed_at": now, "expires_at": now + self.duration})
            db.put(entity)
            return now + self.duration

        expires = db.run_in_transaction(extend)
        if expires is None:
            return False
        self.expires_at = expires
        return True

    def release(self) -> bool:
        """Give the lease up; ``False`` if it was no longer ours (expired and taken over)."""
        def drop() -> bool:
            entity = db.get(self.key)
            if entity is None or entity.get("holder") != self.holder:
                return False
            db.delete(self.key)
            return True

        released = db.run_in_transaction(drop)
        self.expires_at = None
        return released


def current_holder(name: str) -> db.Entity | None:
    """The lease entity of ``name`` if someone holds it now (not expired), else ``None``."""
    entity = db.get(lease_key(name))
    if entity is None or entity["expires_at"] <= utc_now():
        return None
    return entity


class Heartbeat:
    """Call ``beat`` every ``interval`` seconds on a daemon thread while a block runs.

    ``beat`` returning ``False`` means the claim it keeps alive is lost: the heartbeat logs it
    and stops. A ``beat`` that raises is logged and tried again on the next beat.
    """

    def __init__(self, beat: Callable[[], bool | None], interval: float, *, what: str) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat of {what}: the interval must be positive, got {interval}")
        self.beat, self.interval, self.what = beat, float(interval), what
        self.beats = 0
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        # In the starter's context: the beat uses the app's Datastore bound there.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=f"heartbeat {self.what}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = self.beat()
            except Exception:
                log.exception("heartbeat of %s failed; trying again in %.1f s", self.what, self.interval)
                continue
            self.beats += 1
            if alive is False:
                self.lost = True
                log.error("%s: its lease was lost while the work still runs (taken over after it expired)",
                          self.what)
                return

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def stamper(key: db.Key, field: str, belongs: Callable[[db.Entity], bool]) -> Callable[[], bool]:
    """A heartbeat's beat that stamps ``field`` of entity ``key`` with the time, while ``belongs``.

    Keeps a claim recorded on another entity alive; ``False`` (lost) once the entity is gone or
    ``belongs(entity)`` says it moved on.
    """
    def beat() -> bool:
        def stamp() -> bool:
            entity = db.get(key)
            if entity is None or not belongs(entity):
                return False
            entity[field] = utc_now()
            db.put(entity)
            return True

        return db.run_in_transaction(stamp)

    return beat


def renew_interval(duration: datetime.timedelta) -> float:
    """Seconds between renewals of a lease of ``duration``."""
    return duration.total_seconds() / RENEWALS_PER_LEASE


@contextlib.contextmanager
def holding(name: str, duration: datetime.timedelta, *, what: str | None = None) -> Iterator[Lease]:
    """Hold lease ``name`` for the block, renewing it while the block runs; release it after.

    Raises :class:`LockHeld` (the queue retries the task later) when another holder has it.
    """
    lease = Lease(name, duration)
    what = what or f"lease {name!r}"
    if not lease.acquire():
        holder = current_holder(name)
        until = f" until {holder['expires_at'].isoformat()}" if holder is not None else ""
        raise LockHeld(f"{what}: lock {name!r} is held by another run{until}; the queue will try again later")
    try:
        with Heartbeat(lease.renew, renew_interval(duration), what=what):
            yield lease
    finally:
        try:
            lease.release()
        except Exception:
            log.exception("%s: could not release lock %r; it expires on its own", what, name)
