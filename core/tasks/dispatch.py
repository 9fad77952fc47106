"""How task requests leave the app: batched per request, through an outbox in transactions.

- Inside a Datastore transaction a request is written to the outbox *in that transaction* and
  enqueued right after the commit; a rollback leaves no trace, a crash between commit and enqueue
  leaves the outbox entity, which :func:`sweep_outbox` enqueues later. Outbox tasks are named
  after their outbox entity, so a sweep racing a late enqueue cannot create the task twice.
- Inside a request or a task (a :func:`request_scope` block) requests are collected and created
  together, concurrently, when the block ends: before the response goes out, every one is
  confirmed created or kept in the outbox for retry, never dropped.
- Anywhere else a request is created at once.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import logging
import uuid
from collections.abc import Iterator, Sequence

from core import db
from core import json as tagged_json
from core.tasks.errors import EnqueueError
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import EnqueueResult, EnqueueStatus, TaskRequest

log = logging.getLogger(__name__)

OUTBOX_KIND = "_tasks_outbox"
#: An outbox entry younger than this may still be enqueued by its own commit callback.
SWEEP_GRACE = datetime.timedelta(seconds=30)

@dataclasses.dataclass
class _Pending:
    request: TaskRequest
    #: Set when the request is already kept in the outbox (made inside a transaction).
    outbox_key: db.Key | None = None


_batch: contextvars.ContextVar[list[_Pending] | None] = contextvars.ContextVar("core_task_batch", default=None)


def send(runtime: TaskRuntime, request: TaskRequest) -> None:
    """Send one task request the way the current context asks for."""
    if db.is_in_transaction():
        _send_in_transaction(runtime, request)
    else:
        _submit(runtime, _Pending(request))


def _submit(runtime: TaskRuntime, pending: _Pending) -> None:
    batch = _batch.get()
    if batch is not None:
        batch.append(pending)
    else:
        _flush(runtime, [pending])


@contextlib.contextmanager
def request_scope(runtime: TaskRuntime) -> Iterator[None]:
    """Collect every task the block defers; create them together when it ends without error.

    A block that raises drops what it collected (a failed task is retried and defers again),
    except requests made in committed transactions, which stay in the outbox for the sweep.
    """
    token = _batch.set([])
    try:
        yield
        batch = _batch.get() or []
        _flush(runtime, batch)
    finally:
        _batch.reset(token)


def flush(runtime: TaskRuntime, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
    """Create ``requests`` together, keeping every failed one in the outbox."""
    return _flush(runtime, [_Pending(r) for r in requests])


def _flush(runtime: TaskRuntime, batch: Sequence[_Pending]) -> list[EnqueueResult]:
    """Create a batch concurrently. Created outbox entries are deleted; failed requests are kept.

    Raises :class:`EnqueueError` only when a request could neither be created nor kept.
    """
    if not batch:
        return []
    try:
        results = runtime.transport.enqueue_many([p.request for p in batch])
    except Exception as exc:  # a transport must not raise, but never lose the batch if it does
        log.exception("transport failed to enqueue a batch")
        results = [EnqueueResult(EnqueueStatus.FAILED, error=exc) for _ in batch]
    to_keep = [p.request for p, res in zip(batch, results) if not res.ok and p.outbox_key is None]
    done = [p.outbox_key for p, res in zip(batch, results) if res.ok and p.outbox_key is not None]
    if to_keep:
        log.warning("%d task(s) not created now; keeping them in the outbox for the sweep", len(to_keep))
        try:
            db.put([_outbox_entity(r) for r in to_keep])
        except Exception as exc:
            raise EnqueueError(f"{len(to_keep)} task(s) could neither be created nor kept: {exc}") from exc
    if done:
        try:
            db.delete(done)
        except Exception:
            log.exception("created tasks stay in the outbox; the sweep will find them already queued")
    return results


def _outbox_entity(request: TaskRequest, outbox_id: str | None = None) -> db.Entity:
    outbox_id = outbox_id or uuid.uuid4().hex
    entity = db.Entity(db.key(OUTBOX_KIND, outbox_id), exclude_from_indexes=("body", "headers"))
    entity.update({
        "queue": request.queue, "path": request.path, "body": request.body,
        "headers": tagged_json.dumps(dict(request.headers)), "name": request.name or f"outbox-{outbox_id}",
        "eta": request.eta, "target_version": request.target_version, "method": request.method,
        "created": datetime.datetime.now(datetime.timezone.utc),
    })
    return entity


def _request_from_outbox(entity: db.Entity) -> TaskRequest:
    return TaskRequest(queue=entity["queue"], path=entity["path"], body=bytes(entity["body"]),
                       headers=tagged_json.loads(entity["headers"]), name=entity["name"],
                       eta=entity.get("eta"), target_version=entity.get("target_version"),
                       method=entity.get("method") or "POST")


def _send_in_transaction(runtime: TaskRuntime, request: TaskRequest) -> None:
    entity = _outbox_entity(request)
    db.put(entity)
    pending = _Pending(_request_from_outbox(entity), entity.key)
    db.on_commit(lambda: _submit(runtime, pending))


def sweep_outbox(runtime: TaskRuntime, *, older_than: datetime.timedelta = SWEEP_GRACE,
                 limit: int = 500) -> int:
    """Enqueue outbox entries whose own enqueue never happened; returns how many were sent."""
    cutoff = datetime.datetime.now(datetime.timezone.utc) - older_than
    entities = db.Query(OUTBOX_KIND).filter("created <", cutoff).order("created").run(limit=limit)
    if not entities:
        return 0
    requests = [_request_from_outbox(e) for e in entities]
    results = runtime.transport.enqueue_many(requests)
    done = [e.key for e, res in zip(entities, results) if res.ok]
    if done:
        db.delete(done)
    return len(done)
