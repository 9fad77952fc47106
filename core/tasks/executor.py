"""Run one task request through the pipeline; the ones given up become dead letters (:mod:`core.tasks.deadletters`).

Flask-free: the HTTP handler passes method, path, headers and body and turns the
:class:`Outcome` into a response; tests and the in-process queue can call it directly. The
status follows the one mapping in :mod:`core.tasks.errors`. The steps, in order
(:mod:`core.tasks.pipeline`)::

    report → verify → dead letters → decode → hooks → retry warning → payload cleanup
           → lifecycle → run (by the task's kind, in the caller's environment)
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.deadletters import record as record_dead_letter
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
