"""The send path: every task that leaves the app passes :func:`send`, once.

A deferred call, a periodic or startup run, a callable task, a QueryIter step, a retry the app
schedules itself, a workflow's member or callback, a dead letter sent again: each is an envelope
addressed to a path, and here it gets, in this order: the ``TASKS_SECRET`` check, the trace it
carries (with OpenTelemetry a ``PRODUCER`` span), its encoding, the ``before_enqueue`` hooks, its
record when it starts a tracked task, its signature, and its way out (:mod:`core.tasks.outbox`):
the outbox inside a Datastore transaction (queued if and only if it commits), else the request's
batch, or at once when it is named (the queue's answer tells a duplicate from a new task).

The task kinds build envelopes and call this room; it imports none of them.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from core import db
from core.tasks import message, outbox, records, telemetry, wire
from core.tasks.errors import ConfigurationError, PayloadError
from core.tasks.hooks import before_enqueue
from core.tasks.runtime import TaskRuntime
from core.tasks.task_handle import TaskHandle
from core.tasks.transports.base import EnqueueResult, EnqueueStatus

__all__ = ["send", "resend"]


def send(runtime: TaskRuntime, envelope: message.Envelope, *, path: str, target: str | None,
         name: str | None = None, eta: datetime.datetime | None = None, target_version: str | None = None,
         deadline: datetime.timedelta | None = None, record: bool = False,
         body: bytes | None = None, check: Callable[[], None] | None = None) -> TaskHandle:
    """Send ``envelope`` to be pushed back to ``path`` on its queue; returns the task's handle.

    ``target`` is what hooks and the record call the task. ``name`` is the queue's task name
    (a duplicate is refused by the queue). ``record`` starts a tracked task: its record is written
    (inside a transaction, with it) and the task is named after its id, so a cancel can find it;
    a continuation of a task (a retry, a resend) keeps the record it has. ``body`` sends an
    already encoded envelope as it is (a dead letter's): ``envelope`` then only describes it, and
    the body keeps the trace it was first sent with.
    Raises ``TypeError`` naming the value when the envelope can't be encoded, before any hook;
    ``check`` runs after the encoding (a deferred call's argument check), before anything is sent.
    """
    if not runtime.settings.tasks_secret:
        raise ConfigurationError("TASKS_SECRET is not set: tasks could not be verified")
    if body is None:
        trace = telemetry.enqueue_trace(target or envelope.kind, envelope.queue, lookup=runtime.tracing)
        if trace is not None:
            envelope.env = {**envelope.env, "trace": trace}
        body = message.encode(envelope, limit=runtime.settings.tasks_payload_limit)
    if check is not None:
        check()
    before_enqueue(runtime, envelope, target, name=name, eta=eta)
    queue_task = name or (envelope.id if record else None)
    handle = TaskHandle(envelope.id, envelope.queue, name, eta, tracked=record, queue_task=queue_task)
    on_result: Any = handle._created
    if record:
        stamp = records.write_new(envelope.id, target=target or envelope.kind, queue=envelope.queue,
                                  kind=envelope.kind, queue_task=queue_task, eta=eta,
                                  ttl=datetime.timedelta(seconds=runtime.settings.tasks_result_ttl),
                                  payload=envelope.payload)
        if stamp is not None:  # the first attempt claims the record with it, without reading it
            body = message.with_record(body, stamp, limit=runtime.settings.tasks_payload_limit)
        on_result = _forget_duplicate(handle)
    request = wire.signed_request(runtime, envelope.queue, path, body, name=queue_task, eta=eta,
                                  target_version=target_version, dispatch_deadline=deadline)
    # A named task is created at once (outside a transaction), so the handle knows if it was a duplicate.
    outbox.send(runtime, request, on_result=on_result, now=name is not None, ticket=handle._ticket)
    runtime.metrics.enqueued(envelope.queue, target or envelope.kind)
    return handle


def resend(runtime: TaskRuntime, body: bytes, *, queue: str, path: str, target: str | None = None) -> TaskHandle:
    """Send a stored task body again as it is, freshly signed (a dead letter's retry).

    Hooks see the task its body describes; a body that can't be decoded (itself a dead letter's
    reason) is still sent, and hooks see only its queue and ``target``.
    """
    try:
        envelope = message.decode(body)
    except PayloadError:
        envelope = message.Envelope(kind="unknown", payload={}, queue=queue)
    envelope.queue = queue
    return send(runtime, envelope, path=path, target=target, body=body)


def _forget_duplicate(handle: TaskHandle) -> Any:
    """The result callback of a tracked task: a name that was taken queued nothing, so no record."""
    def report(result: EnqueueResult) -> None:
        handle._created(result)
        if result.status is EnqueueStatus.DUPLICATE:
            db.delete(records.record_key(handle.id))
    return report
