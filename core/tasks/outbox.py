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
Whatever cannot be created is kept in the outbox; nothing is dropped.
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
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


#: Told how the queue answered one request (a task handle learns whether its name was taken).
ResultCallback = Callable[[EnqueueResult], None]


@dataclasses.dataclass
class _Pending:
    request: TaskRequest
    #: The outbox entity already holding this request (made inside a transaction).
    outbox_key: db.Key | None = None
    on_result: ResultCallback | None = None


def _report(batch: Sequence[_Pending], results: Sequence[EnqueueResult]) -> None:
    for pending, result in zip(batch, results):
        if pending.on_result is not None:
            try:
                pending.on_result(result)
            except Exception:
                log.exception("enqueue result callback failed")


_batch: contextvars.ContextVar[list[_Pending] | None] = contextvars.ContextVar("core_task_batch", default=None)


def send(runtime: TaskRuntime, request: TaskRequest, *, on_result: ResultCallback | None = None,
         now: bool = False) -> TaskRequest:
    """Send one task request the way the current context asks for (``now``: not batched).

    Returns the request as it is sent: inside a transaction an unnamed one gets its outbox name.
    """
    if db.is_in_transaction():
        keys, (named,) = _write_outbox([request])
        pending = _Pending(named, keys[0], on_result)
        db.on_commit(lambda: _submit(runtime, pending))
        return named
    if now:
        _flush(runtime, [_Pending(request, on_result=on_result)])
    else:
        _submit(runtime, _Pending(request, on_result=on_result))
    return request


def _submit(runtime: TaskRuntime, pending: _Pending) -> None:
    batch = _batch.get()
    if batch is not None:
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
    results = _create(runtime, [p.request for p in batch])
    _report(batch, results)
    to_keep = [p.request for p, res in zip(batch, results) if not res.ok and p.outbox_key is None]
    done = [p.outbox_key for p, res in zip(batch, results) if res.ok and p.outbox_key is not None]
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
        entity = db.Entity(db.key(OUTBOX_KIND, outbox_id), exclude_from_indexes=("requests", "count"))
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


def _read_outbox(entity: db.Entity) -> list[TaskRequest]:
    return [_decode_request(d) for d in tagged_json.loads(bytes(entity["requests"]))]


def outbox_size() -> int:
    """Task requests waiting in the outbox."""
    return sum(int(e.get("count") or 0) for e in db.Query(OUTBOX_KIND).run())


def sweep_outbox(runtime: TaskRuntime, *, older_than: datetime.timedelta = SWEEP_GRACE, limit: int = 100) -> int:
    """Create the outbox entries whose own creation never happened; returns how many were sent.

    Requests in the outbox carry deterministic names, so one that was created after all is
    refused by the queue as a duplicate, not run twice.
    """
    cutoff = runtime.clock.now() - older_than
    sent = 0
    for entity in db.Query(OUTBOX_KIND).filter("created <", cutoff).order("created").run(limit=limit):
        requests = _read_outbox(entity)
        results = _create(runtime, requests)
        left = [r for r, res in zip(requests, results) if not res.ok]
        sent += len(requests) - len(left)
        if not left:
            db.delete(entity.key)
        else:
            entity["requests"] = tagged_json.dumps([_encode_request(r) for r in left]).encode("utf-8")
            entity["count"] = len(left)
            db.put(entity)
    return sent


def wait_for_background(timeout: float = 30.0, runtime: TaskRuntime | None = None) -> None:
    """Wait until batches the app (default: the current one) handed to the background are created."""
    runtime = runtime if runtime is not None else current_runtime()
    if runtime is not None:
        runtime.background.wait(timeout)
