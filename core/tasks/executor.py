"""Run one task request through the pipeline, and record the dead letters of the ones given up.

Flask-free: the HTTP handler passes method, path, headers and body and turns the
:class:`Outcome` into a response; tests and the in-process queue can call it directly. The
status follows the one mapping in :mod:`core.tasks.errors`. The steps, in order
(:mod:`core.tasks.pipeline`)::

    report → verify → dead letters → decode → hooks → retry warning → payload cleanup
           → lifecycle → run (by the task's kind, in the caller's environment)
"""
from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Mapping

from core import db
from core.clock import utc_now
from core.tasks import message
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import PermanentTaskFailure, http_status_for
from core.tasks.pipeline import (
    RETRY_WARNING_THRESHOLD,
    Delivery,
    GivenUp,
    Outcome,
    Proceed,
    Step,
    chain,
    cleanup_payload,
    decode,
    report,
    retry_warning,
    run,
    run_hooks,
    target_of,
    track_lifecycle,
    verify,
)
from core.tasks.runtime import TaskRuntime

__all__ = ["DEAD_LETTER_KIND", "Outcome", "RETRY_WARNING_THRESHOLD", "execute", "record_dead_letter", "STEPS"]

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


#: The pipeline of the task handler, outermost first.
STEPS: tuple[Step, ...] = (report, verify, dead_letters, decode, run_hooks, retry_warning, cleanup_payload,
                           track_lifecycle, run)
_pipeline = chain(STEPS)


def execute(runtime: TaskRuntime, *, method: str, path: str, headers: Mapping[str, str], body: bytes,
            expected_kinds: tuple[str, ...] | None = None) -> Outcome:
    """Verify and run one task request; never raises for anything the request contains.

    ``expected_kinds`` limits the kinds this request may carry; without it, the kind's own routes do.
    """
    return _pipeline(Delivery(runtime, method, path, headers, body, expected_kinds))


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
        "created": utc_now(),
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
