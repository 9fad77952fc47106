"""Run one task request through the pipeline, and record the dead letters of the ones given up.

Flask-free: the HTTP handler passes method, path, headers and body and turns the
:class:`Outcome` into a response; tests and the in-process queue can call it directly. The
status follows the one mapping in :mod:`core.tasks.errors`. Each request runs through its app's
pipeline (the runtime's, :mod:`core.tasks.middleware`); the built-in middleware, declared here in
their order (:mod:`core.tasks.pipeline`)::

    report → verify → dead_letters → decode → hooks → retry_warning → payload_cleanup
           → lifecycle → environment → telemetry → run (by the task's kind)

An app's own middleware take their places among them by these names.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import traceback
from collections.abc import Mapping

from core import db
from core.tasks import message
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import PermanentTaskFailure, http_status_for
from core.tasks.outcome import Outcome
from core.tasks.pipeline import (
    Delivery,
    GivenUp,
    Proceed,
    cleanup_payload,
    decode,
    environment,
    report,
    retry_warning,
    run,
    run_hooks,
    target_of,
    traced,
    track_lifecycle,
    verify,
)
from core.tasks.registry import declare_builtin
from core.tasks.runtime import TaskRuntime

__all__ = ["DEAD_LETTER_KIND", "BUILTIN_MIDDLEWARE", "execute", "record_dead_letter"]

log = logging.getLogger(__name__)

DEAD_LETTER_KIND = "_tasks_dead_letter"
#: Bytes of a task body a dead letter keeps (an entity holds at most 1 MiB); the rest is cut off.
DEAD_LETTER_PAYLOAD_BYTES = 900_000
#: Characters of error text and traceback a dead letter keeps.
DEAD_LETTER_TEXT_CHARS = 20_000


def dead_letters(delivery: Delivery, proceed: Proceed) -> Outcome:
    """A task that can never succeed is recorded as a dead letter and answered 2xx (no more retries)."""
    try:
        return proceed(delivery)
    except GivenUp as given_up:
        return _permanent(delivery, given_up.error)
    except PermanentTaskFailure as exc:  # undecodable, unknown kind or target: before the task began
        return _permanent(delivery, exc)


#: The built-in middleware of every app's pipeline, by name, outermost first.
BUILTIN_MIDDLEWARE = {"report": report, "verify": verify, "dead_letters": dead_letters, "decode": decode,
                      "hooks": run_hooks, "retry_warning": retry_warning, "payload_cleanup": cleanup_payload,
                      "lifecycle": track_lifecycle, "environment": environment, "telemetry": traced, "run": run}
for _name, _step in BUILTIN_MIDDLEWARE.items():
    declare_builtin("middleware", _name, _step)


def execute(runtime: TaskRuntime, *, method: str, path: str, headers: Mapping[str, str], body: bytes,
            expected_kinds: tuple[str, ...] | None = None, cron: str | None = None) -> Outcome:
    """Verify and run one task request (or, with ``cron``, that group's cron ping) through the app's pipeline.

    Never raises for anything the request contains. ``expected_kinds`` limits the kinds this
    request may carry; without it, the kind's own routes do.
    """
    return runtime.pipeline(Delivery(runtime, method, path, headers, body, expected_kinds, cron))


def _permanent(delivery: Delivery, exc: PermanentTaskFailure) -> Outcome:
    """Record a dead letter and answer 2xx so the queue stops retrying."""
    envelope, info = delivery.envelope, delivery.info
    assert info is not None
    target = target_of(envelope) if envelope is not None else None
    task_id = envelope.id if envelope else None
    kind = envelope.kind if envelope else None
    log.error("task %s (%s) failed permanently: %s", task_id or "?", target, exc)
    try:
        key = record_dead_letter(path=delivery.path, body=delivery.body, error=exc, info=info, envelope=envelope)
    except Exception as store_error:
        # Answering 2xx now would lose the evidence: the queue delivers the task again instead.
        log.exception("could not record the dead letter of task %s; the queue will deliver it again", task_id or "?")
        return Outcome(500, f"permanent failure, dead letter not stored: {store_error!r}", task_id=task_id,
                       kind=kind, target=target, error=store_error, info=info)
    return Outcome(http_status_for(exc), f"permanent failure: {exc}", task_id=task_id, kind=kind, target=target,
                   error=exc, info=info, dead_letter=key)


def record_dead_letter(*, path: str, body: bytes, error: BaseException, info: TaskInfo,
                       envelope: message.Envelope | None) -> db.Key:
    """Store a dead letter; what does not fit in one entity is kept truncated, with its size and SHA-256."""
    entity = db.Entity(db.key(DEAD_LETTER_KIND), exclude_from_indexes=("payload", "traceback", "error",
                                                                        "payload_sha256"))
    stored = body[:DEAD_LETTER_PAYLOAD_BYTES]
    entity.update({
        "task_id": _clip(envelope.id, 300) if envelope else None,
        "kind": _clip(envelope.kind, 300) if envelope else None,
        "target": _clip(target_of(envelope), 300) if envelope else None,
        "queue": _clip(info.queue or (envelope.queue if envelope else None), 300),
        "path": _clip(path, 300),
        "error": _clip(f"{type(error).__name__}: {error}", DEAD_LETTER_TEXT_CHARS),
        "traceback": "".join(traceback.format_exception(error))[-DEAD_LETTER_TEXT_CHARS:],
        "attempts": info.execution_count + 1,
        "created": datetime.datetime.now(datetime.UTC),
        "payload": stored,
        "payload_size": len(body),
        "payload_sha256": hashlib.sha256(body).hexdigest(),
        "payload_truncated": len(stored) < len(body),
    })
    db.put(entity)
    return entity.key  # type: ignore[no-any-return]


def _clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (indexed strings may not exceed 1,500 bytes)."""
    return text if text is None or len(text) <= limit else text[:limit - 1] + "…"
