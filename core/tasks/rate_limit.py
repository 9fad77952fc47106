"""Global rate limits: ``@callDeferred(rate_limit="10/s", rate_key="customer-{customer_id}")``.

At most ``limit`` runs of a key start in any window of ``per`` seconds (``/s``, ``/m``, ``/h``),
counted across every instance and queue. The key is the task's registered name, or ``rate_key``
filled from the call's arguments like ``lock=``; keys are shared: tasks whose keys agree count
together (they should declare the same limit: the shards are cut by it).

How: the limit is split over ``n`` shard entities (kind :data:`RATE_KIND`) so that a hot key is not
one hot entity; shard ``i`` allows ``limit // n`` starts (one more for the first ``limit % n``) and
keeps the times of its recent starts. A task is admitted by a transaction on one shard that has
booked fewer than its share in the last ``per`` seconds (a sliding window, so the limit holds in
*every* window, not only in aligned ones); the start is booked :data:`START_SLACK` ahead and the
task starts only if it is still before then (else it waits), so a shard's starts are never
closer than its bookings. The shards' shares add up to the limit, so no window ever holds more
starts. A task tries one random shard; if that one is full it reads all shards in one lookup and
tries those with room. A task finding none waits: it is sent again (same task id, record and
attempt count) for when the first shard frees up, plus a jitter that grows with its waits, and
answered 200, so a wait is never an attempt, a failure or a dead letter.

Datastore operations per task (``n`` shards, :func:`shard_count`): admitted on the first shard,
one transaction (a lookup and a commit of one entity); a full first shard adds one lookup of
``n`` entities and a transaction per shard tried; a wait costs those lookups and one enqueue.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import random
import re
from collections.abc import Callable
from typing import Any

from core import db
from core.clock import utc_now
from core.tasks import message
from core.tasks.errors import ConfigurationError, PayloadError
from core.tasks.locks import check_template, fill_template
from core.tasks.outcome import Outcome
from core.tasks.pipeline import Delivery, Proceed
from core.tasks.send import send
from core.tasks.transports.base import TASK_NAME_RE, hashed_task_name

__all__ = ["RATE_KIND", "RateLimit", "rate_limit_spec", "rate_marker", "admit", "wait_for_rate"]

RATE_KIND = "_tasks_rate"
#: The payload field of a rate-limited call: its key, limit and period.
FIELD = "rate"
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
#: Most shards of one key: an admission reads them all at worst.
MAX_SHARDS = 16
#: Most waits' worth of growth of the jitter, in windows (a waiter comes back within this many).
MAX_SPREAD = 16
MAX_KEY_CHARS = 400
#: Seconds an admitted task has to start: its shard books it as starting at the end of them, and a
#: task that could not start by then (a slow commit, a starved process) does not start but waits
#: again. So the starts themselves, not only the admissions, keep to the limit.
START_SLACK = 0.15


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """A task's rate limit: ``limit`` starts per ``per`` seconds, for the key its template gives."""

    limit: int
    per: float
    key: str | None = None


def rate_limit_spec(rate_limit: str | None, rate_key: str | None, func: Callable[..., Any],
                    what: str) -> RateLimit | None:
    """Check ``rate_limit=`` (``"10/s"``, ``"5/m"``, ``"100/h"``) and ``rate_key=`` at decoration."""
    if rate_limit is None:
        if rate_key is not None:
            raise ConfigurationError(f"{what}: rate_key= needs rate_limit=")
        return None
    matched = _RATE_RE.fullmatch(rate_limit) if isinstance(rate_limit, str) else None
    if matched is None or int(matched[1]) < 1:
        raise ConfigurationError(f"{what}: rate_limit must be 'N/s', 'N/m' or 'N/h' with N >= 1, "
                                 f"got {rate_limit!r}")
    if rate_key is not None:
        if not isinstance(rate_key, str) or not rate_key:
            raise ConfigurationError(f"{what}: rate_key must be a non-empty name template, got {rate_key!r}")
        check_template(rate_key, func, what, option="rate_key")
    return RateLimit(int(matched[1]), PERIODS[matched[2]], rate_key)


def rate_marker(spec: RateLimit, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a call's payload carries: its key (the template filled now), limit and window."""
    key = name if spec.key is None else fill_template(spec.key, func, name, args, kwargs, option="rate_key")
    return {"key": key, "limit": spec.limit, "per": spec.per}


def shard_count(limit: int, per: float) -> int:
    """Shards of a key: about one admission a second each, at most :data:`MAX_SHARDS`, each allowing >= 1."""
    return max(1, min(limit, MAX_SHARDS, math.ceil(limit / per)))


def _share(limit: int, shards: int, index: int) -> int:
    return limit // shards + (1 if index < limit % shards else 0)


def _shard_key(key: str, index: int) -> db.Key:
    name = f"{key}|{index}"
    if len(name) > MAX_KEY_CHARS:
        name = "sha256:" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return db.key(RATE_KIND, name)


def _recent(entity: db.Entity | None, now: float, per: float) -> list[float]:
    """The shard's booked starts still inside the window that ends now."""
    times = entity.get("times") if entity is not None else None
    return sorted(t for t in (times or []) if now - t < per)


def _take(key: str, index: int, share: int, per: float) -> bool:
    """Admit one start on shard ``index`` if it has room and the task can start in time; ``False`` if not."""
    def claim() -> float | None:
        now = utc_now().timestamp()
        entity = db.get(_shard_key(key, index))
        times = _recent(entity, now, per)
        if len(times) >= share:
            return None
        booked = now + START_SLACK
        shard = db.Entity(_shard_key(key, index), exclude_from_indexes=("key", "times"))
        shard.update({"key": key, "times": [*times, booked]})
        db.put(shard)
        return booked

    try:
        booked = db.run_in_transaction(claim, retries=1)
    except db.TransactionFailedError:
        return False  # others collided on it: try another shard
    return booked is not None and utc_now().timestamp() <= booked  # a late one's slot goes unused


def admit(key: str, limit: int, per: float) -> datetime.datetime | None:
    """Admit one start of ``key`` (``None``), or say when a shard frees up next."""
    shards = shard_count(limit, per)
    first = random.randrange(shards)
    if _take(key, first, _share(limit, shards, first), per):
        return None
    entities = db.get([_shard_key(key, index) for index in range(shards)])
    now = utc_now().timestamp()
    free_at: list[float] = []
    open_shards: list[int] = []
    for index, entity in enumerate(entities):
        times, share = _recent(entity, now, per), _share(limit, shards, index)
        if len(times) < share:
            open_shards.append(index)
        else:
            free_at.append(times[len(times) - share] + per)
    random.shuffle(open_shards)
    for index in open_shards:
        if _take(key, index, _share(limit, shards, index), per):
            return None
    soonest = min(free_at) if free_at else now
    return datetime.datetime.fromtimestamp(max(soonest, now), datetime.UTC)


def _marker_of(payload: Any) -> tuple[str, int, float] | None:
    marker = payload.get(FIELD) if isinstance(payload, dict) else None
    if marker is None:
        return None
    key, limit, per = (marker.get("key"), marker.get("limit"), marker.get("per")) if isinstance(marker, dict) \
        else (None, None, None)
    if not (isinstance(key, str) and key and type(limit) is int and limit >= 1 and per in PERIODS.values()):
        raise PayloadError("malformed rate limit marker")
    return key, limit, float(per)  # type: ignore[arg-type]


def _count(payload: dict[str, Any], field: str) -> int:
    value = payload.get(field)
    return value if type(value) is int and 0 < value < db.INT64_MAX // 2 else 0


def _wait_name(envelope: message.Envelope, waits: int) -> str:
    """The queue name of a task's next try after a wait: a duplicate push sends it only once."""
    resent = _count(envelope.payload, "resent")
    name = f"{envelope.id}-r{resent}-w{waits}" if resent else f"{envelope.id}-w{waits}"
    return name if TASK_NAME_RE.match(name) else hashed_task_name(name, f"-w{waits}", digits=40)


def _send_later(delivery: Delivery, free_at: datetime.datetime, per: float) -> datetime.datetime:
    """Send the task again for after ``free_at``, with its attempts so far: a wait is not an attempt."""
    envelope, info = delivery.envelope, delivery.info
    assert envelope is not None and info is not None
    waits = _count(envelope.payload, "rate_waits") + 1
    eta = free_at + datetime.timedelta(seconds=random.uniform(0, per * min(2 ** (waits - 1), MAX_SPREAD)))
    attempts = _count(envelope.payload, "attempt") + info.retry_count
    payload = {**envelope.payload, "attempt": attempts, "rate_waits": waits}
    if not attempts:
        del payload["attempt"]
    later = message.Envelope(kind=envelope.kind, payload=payload, queue=envelope.queue, env=envelope.env,
                             id=envelope.id, created=envelope.created)
    timeout = payload.get("timeout")
    deadline = datetime.timedelta(seconds=timeout) if isinstance(timeout, (int, float)) \
        and not isinstance(timeout, bool) and timeout > 0 else None
    send(delivery.runtime, later, path=delivery.path, target=delivery.target, name=_wait_name(envelope, waits),
         eta=eta, deadline=deadline)
    return eta


def wait_for_rate(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Middleware: a rate-limited task starts only when admitted; otherwise it is sent again for later."""
    envelope = delivery.envelope
    marked = _marker_of(envelope.payload) if envelope is not None else None
    if marked is None:
        return proceed(delivery)
    key, limit, per = marked
    free_at = admit(key, limit, per)
    if free_at is None:
        return proceed(delivery)
    eta = _send_later(delivery, free_at, per)
    text = f"rate limit of {key!r} ({limit} per {per:g} s) reached; waits until {eta.isoformat()}"
    return delivery.outcome(200, text, skipped=text)
