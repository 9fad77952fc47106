"""How task requests leave the app: batched per request, through an outbox when it pays.

- Inside a Datastore transaction a request is written to the outbox *in that transaction* and
  enqueued right after the commit: a rollback leaves no trace, a crash between commit and
  enqueue leaves the outbox entry, which :func:`sweep_outbox` enqueues later.
- Inside a request or a task (a :class:`RequestScope` block) requests are collected and created
  together when the block ends. When the transport creates a batch cheaply (the local queue: one
  SQLite transaction) or the batch is small, the tasks are created concurrently before the
  response goes out. A large batch for a remote queue is first written to the outbox as *one*
  entity (one Datastore commit, however many tasks) and created right after, in the background:
  the response waits for one durable write instead of ``n / concurrency`` round trips.
- Anywhere else a request is created at once.

Every request that goes through the outbox carries a deterministic, hashed task name, so a sweep
racing a late creation makes the queue answer "already exists" instead of running it twice.
Whatever cannot be created is kept in the outbox and tried again with a growing delay, so what
keeps failing never holds back the rest; what still fails a day on is given up as a dead letter.
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now
from core.tasks.errors import EnqueueError
from core.tasks.runtime import TaskRuntime, current_runtime
from core.tasks.transports.base import EnqueueResult, EnqueueStatus, TaskRequest, hashed_task_name

log = logging.getLogger(__name__)

OUTBOX_KIND = "_tasks_outbox"
#: An outbox entry younger than this may still be created by its own commit or background job.
SWEEP_GRACE = datetime.timedelta(seconds=30)
#: A batch for a remote queue larger than this goes through the outbox (one write) first.
INLINE_CREATE_LIMIT = 16
#: Bytes of requests per outbox entity (Datastore's entity limit is 1 MiB).
OUTBOX_ENTITY_BYTES = 800_000
#: The longest an outbox entry that keeps failing waits between two tries.
SWEEP_BACKOFF_CAP = datetime.timedelta(minutes=30)
#: An outbox entry still failing this long after it was written is given up (a dead letter).
OUTBOX_GIVE_UP = datetime.timedelta(days=1)


#: Told how the queue answered one request (a task handle learns whether its name was taken).
ResultCallback = Callable[[EnqueueResult], None]


@dataclasses.dataclass(eq=False)
class _Pending:
    request: TaskRequest
    #: The outbox entity already holding this request (made inside a transaction).
    outbox_key: db.Key | None = None
    on_result: ResultCallback | None = None
    #: Still in this process (an open transaction or a request's batch), handed to the queue, or withdrawn.
    state: str = "held"
    #: The request's batch holding it until the block ends.
    batch: list[_Pending] | None = None


class Ticket:
    """A sent request's way back while it is still in this process: :func:`withdraw` takes it back."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: _Pending | None = None


def withdraw(ticket: Ticket) -> bool:
    """Take a request back before it leaves: out of its request's batch, its outbox entry deleted.

    ``True`` when it was still held here (waiting in a batch, or made in a transaction not yet
    ended, whose outbox entry is then deleted in it): it will never reach the queue. ``False``
    when it was handed to the queue already (or never sent through ``ticket``).
    """
    pending = ticket.pending
    if pending is None or pending.state != "held":
        return False
    pending.state = "withdrawn"
    if pending.batch is not None and pending in pending.batch:
        pending.batch.remove(pending)
    if pending.outbox_key is not None:
        db.delete(pending.outbox_key)
    return True


def _report(batch: Sequence[_Pending], results: Sequence[EnqueueResult]) -> None:
    for pending, result in zip(batch, results):
        if pending.on_result is not None:
            try:
                pending.on_result(result)
            except Exception:
                log.exception("enqueue result callback failed")


_batch: contextvars.ContextVar[list[_Pending] | None] = contextvars.ContextVar("core_task_batch", default=None)


def send(runtime: TaskRuntime, request: TaskRequest, *, on_result: ResultCallback | None = None,
         now: bool = False, ticket: Ticket | None = None) -> TaskRequest:
    """Send one task request the way the current context asks for (``now``: not batched).

    Returns the request as it is sent: inside a transaction an unnamed one gets its outbox name.
    ``ticket`` lets the caller :func:`withdraw` it while it is still held here.
    """
    if db.is_in_transaction():
        keys, (named,) = _write_outbox([request])
        pending = _Pending(named, keys[0], on_result)
        db.on_commit(lambda: _submit(runtime, pending))
    else:
        named, pending = request, _Pending(request, on_result=on_result)
    if ticket is not None:
        ticket.pending = pending
    if pending.outbox_key is None:
        if now:
            _flush(runtime, [pending])
        else:
            _submit(runtime, pending)
    return named


def _submit(runtime: TaskRuntime, pending: _Pending) -> None:
    if pending.state != "held":
        return
    batch = _batch.get()
    if batch is not None:
        pending.batch = batch
        batch.append(pending)
    else:
        _flush(runtime, [pending])


class RequestScope:
    """Collect every task the block defers; create them together when it ends without error.

    A block that raises drops what it collected (a failed task is retried and defers again),
    except requests made in committed transactions, which stay in the outbox for the sweep.
    A class, not a generator: every task request enters one or two of these.
    """

    __slots__ = ("runtime", "_token")

    def __init__(self, runtime: TaskRuntime) -> None:
        self.runtime = runtime

    def __enter__(self) -> None:
        self._token = _batch.set([])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                batch = _batch.get()
                if batch:
                    runtime = self.runtime
                    fresh = [p for p in batch if p.outbox_key is None]
                    if len(fresh) > INLINE_CREATE_LIMIT and not getattr(runtime.transport, "cheap_batches", False):
                        _flush_through_outbox(runtime, batch)
                    else:
                        _flush(runtime, batch)
        finally:
            _batch.reset(self._token)


def flush(runtime: TaskRuntime, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
    """Create ``requests`` together, keeping every failed one in the outbox."""
    return _flush(runtime, [_Pending(r) for r in requests])


def _create(runtime: TaskRuntime, requests: list[TaskRequest]) -> list[EnqueueResult]:
    try:
        return runtime.transport.enqueue_many(requests)
    except Exception as exc:  # a transport must not raise; never lose the batch if it does
        log.exception("transport failed to enqueue a batch")
        return [EnqueueResult(EnqueueStatus.FAILED, error=exc) for _ in requests]


def _flush(runtime: TaskRuntime, batch: Sequence[_Pending]) -> list[EnqueueResult]:
    """Create a batch concurrently; created outbox entries are deleted, failures are kept.

    Raises :class:`EnqueueError` only when a request could neither be created nor kept.
    """
    if not batch:
        return []
    for pending in batch:
        pending.state = "sent"
    results = _create(runtime, [p.request for p in batch])
    _report(batch, results)
    to_keep: list[TaskRequest] = []
    done: list[db.Key] = []
    for pending, result in zip(batch, results):
        if result.status is EnqueueStatus.FAILED:
            if pending.outbox_key is None:
                to_keep.append(pending.request)
        elif pending.outbox_key is not None:
            done.append(pending.outbox_key)
    if to_keep:
        log.warning("%d task(s) not created now; keeping them in the outbox for the sweep", len(to_keep))
        try:
            _write_outbox(to_keep)
        except Exception as exc:
            raise EnqueueError(f"{len(to_keep)} task(s) could neither be created nor kept: {exc}") from exc
    if done:
        _delete_quietly(done)
    return results


def _flush_through_outbox(runtime: TaskRuntime, batch: Sequence[_Pending]) -> None:
    """Keep the batch durably with one write, then create it in the background."""
    for pending in batch:
        pending.state = "sent"
    fresh = [p.request for p in batch if p.outbox_key is None]
    try:
        keys, named = _write_outbox(fresh)
    except Exception:
        log.exception("could not write the batch to the outbox; creating it now instead")
        _flush(runtime, batch)
        return
    runtime.background.submit(_create_from_outbox, runtime, named, keys,
                         [p for p in batch if p.outbox_key is not None], [p for p in batch if p.outbox_key is None])


def _create_from_outbox(runtime: TaskRuntime, named: list[TaskRequest], keys: list[db.Key],
                        transactional: list[_Pending], fresh: list[_Pending]) -> None:
    try:
        results = _create(runtime, named)
        _report(fresh, results)
        if all(r.ok for r in results):
            _delete_quietly(list(dict.fromkeys(keys)))
        if transactional:
            _flush(runtime, transactional)
    except Exception:
        log.exception("background creation failed; the outbox sweep will retry")


def _delete_quietly(keys: list[db.Key]) -> None:
    try:
        db.delete(keys)
    except Exception:
        log.exception("created tasks stay in the outbox; the sweep will find them already queued")


# --- the outbox -------------------------------------------------------------------------------

def _task_name(outbox_id: str, index: int) -> str:
    return hashed_task_name(f"{outbox_id}:{index}", prefix="ob-", digits=40)


def _encode_request(request: TaskRequest) -> dict[str, Any]:
    return {"queue": request.queue, "path": request.path, "body": request.body, "headers": dict(request.headers),
            "name": request.name, "eta": request.eta, "target_version": request.target_version,
            "method": request.method, "dispatch_deadline": request.dispatch_deadline}


def _decode_request(data: dict[str, Any]) -> TaskRequest:
    return TaskRequest(queue=data["queue"], path=data["path"], body=data["body"], headers=data["headers"],
                       name=data["name"], eta=data["eta"], target_version=data["target_version"],
                       method=data["method"], dispatch_deadline=data.get("dispatch_deadline"))


def _write_outbox(requests: Sequence[TaskRequest]) -> tuple[list[db.Key], list[TaskRequest]]:
    """Write requests to the outbox, naming the unnamed ones; returns each one's entity key.

    Requests are packed into as few entities as fit under Datastore's entity size limit.
    """
    keys: list[db.Key] = []
    named: list[TaskRequest] = []
    entities: list[db.Entity] = []
    group: list[dict[str, Any]] = []
    size = 0
    outbox_id = uuid.uuid4().hex

    def close_group() -> None:
        nonlocal group, size, outbox_id
        if not group:
            return
        entity = db.Entity(db.key(OUTBOX_KIND, outbox_id), exclude_from_indexes=_UNINDEXED)
        entity.update({"requests": tagged_json.dumps(group).encode("utf-8"), "count": len(group),
                       "created": utc_now()})
        entities.append(entity)
        group, size, outbox_id = [], 0, uuid.uuid4().hex

    for request in requests:
        if group and size + len(request.body) > OUTBOX_ENTITY_BYTES:
            close_group()
        if request.name is None:
            request = dataclasses.replace(request, name=_task_name(outbox_id, len(group)))
        group.append(_encode_request(request))
        size += len(request.body) + 500
        named.append(request)
        keys.append(db.key(OUTBOX_KIND, outbox_id))
    close_group()
    db.put(entities)
    return keys, named


#: An entry's ``created`` is when the sweep may take it: its write, then after each failed try the
#: next try (so one query on one property finds what is due). ``written`` keeps the first write,
#: ``attempts`` and ``last_error`` what the sweep's tries did.
_UNINDEXED = ("requests", "count", "written", "attempts", "last_error")


def _read_outbox(entity: db.Entity) -> list[TaskRequest]:
    return [_decode_request(d) for d in tagged_json.loads(bytes(entity["requests"]))]


def outbox_size() -> int:
    """Task requests waiting in the outbox."""
    return sum(int(e.get("count") or 0) for e in db.Query(OUTBOX_KIND).run())


@dataclasses.dataclass
class OutboxSweep:
    """What one sweep did, in task requests: created, kept for a later try, given up as dead letters."""

    sent: int = 0
    retried_later: int = 0
    given_up: int = 0


#: Called with each request the sweep gives up on, the last error and the attempts made (a dead letter).
GiveUp = Callable[[TaskRequest, str, int], object]


def _retry_delay(attempts: int) -> datetime.timedelta:
    """How long an entry that failed ``attempts`` times waits: doubling from the grace, capped, jittered."""
    base = min(SWEEP_GRACE * 2 ** max(attempts - 1, 0), SWEEP_BACKOFF_CAP)
    return base * random.uniform(0.75, 1.25)


def sweep(runtime: TaskRuntime, *, older_than: datetime.timedelta = SWEEP_GRACE, limit: int = 100,
          pages: int = 10, give_up_after: datetime.timedelta = OUTBOX_GIVE_UP,
          give_up: GiveUp | None = None) -> OutboxSweep:
    """Create the outbox entries that are due (their own creation never happened), ``limit`` a page.

    An entry that fails is tried again later with a growing delay (its ``attempts`` kept on it,
    its ``created`` moved to the next try), so the next page, and the next sweep, reach the
    entries behind it: failing entries never block the rest. One still failing ``give_up_after``
    its first write is handed to ``give_up`` (the periodic sweep makes it a dead letter) and
    deleted; without ``give_up`` it is kept. Requests in the outbox carry deterministic names,
    so one that was created after all is refused by the queue as a duplicate, not run twice.
    """
    now = runtime.clock.now()
    cutoff = now - older_than
    report = OutboxSweep()
    for _page in range(pages):
        entities = db.Query(OUTBOX_KIND).filter("created <", cutoff).order("created").run(limit=limit)
        if not entities:
            break
        requests = [_read_outbox(entity) for entity in entities]
        results = _create(runtime, [r for group in requests for r in group])
        position = 0
        for entity, group in zip(entities, requests):
            outcome = results[position:position + len(group)]
            position += len(group)
            _after_sweep(entity, group, outcome, now, give_up_after, give_up, report)
        if len(entities) < limit:
            break
    return report


def _after_sweep(entity: db.Entity, group: list[TaskRequest], results: Sequence[EnqueueResult],
                 now: datetime.datetime, give_up_after: datetime.timedelta, give_up: GiveUp | None,
                 report: OutboxSweep) -> None:
    """Delete an entry all sent; otherwise keep what failed for a later try, or give it up when too old."""
    left = [(r, res) for r, res in zip(group, results) if not res.ok]
    report.sent += len(group) - len(left)
    if not left:
        db.delete(entity.key)
        return
    attempts = int(entity.get("attempts") or 0) + 1
    error = "; ".join(sorted({f"{type(res.error).__name__}: {res.error}" for _, res in left}))[:1500]
    written = entity.get("written") or entity.get("created")
    if give_up is not None and isinstance(written, datetime.datetime) and now - written >= give_up_after:
        log.error("giving up %d outbox task(s) unsent since %s after %d attempts: %s",
                  len(left), written.isoformat(), attempts, error)
        for request, _res in left:
            give_up(request, error, attempts)
        report.given_up += len(left)
        db.delete(entity.key)
        return
    entity["requests"] = tagged_json.dumps([_encode_request(r) for r, _ in left]).encode("utf-8")
    entity.update({"count": len(left), "attempts": attempts, "last_error": error, "written": written,
                   "created": now + _retry_delay(attempts)})
    entity.exclude_from_indexes = set(_UNINDEXED)
    db.put(entity)
    report.retried_later += len(left)


def sweep_outbox(runtime: TaskRuntime, *, older_than: datetime.timedelta = SWEEP_GRACE, limit: int = 100,
                 give_up: GiveUp | None = None) -> int:
    """:func:`sweep` the outbox; returns how many task requests were sent."""
    return sweep(runtime, older_than=older_than, limit=limit, give_up=give_up).sent


def wait_for_background(timeout: float = 30.0, runtime: TaskRuntime | None = None) -> None:
    """Wait until batches the app (default: the current one) handed to the background are created."""
    runtime = runtime if runtime is not None else current_runtime()
    if runtime is not None:
        runtime.background.wait(timeout)
