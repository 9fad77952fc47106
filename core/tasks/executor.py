"""Run one task request through the pipeline; the ones given up become dead letters (:mod:`core.tasks.deadletters`).

Flask-free: the HTTP handler passes method, path, headers and body and turns the
:class:`Outcome` into a response; tests and the in-process queue can call it directly. The
status follows the one mapping in :mod:`core.tasks.errors`. Each request runs through its app's
pipeline (the runtime's, :mod:`core.tasks.middleware`); the built-in middleware, declared here in
their order (:mod:`core.tasks.pipeline`)::

    report → verify → dead_letters → decode → hooks → retry_warning → payload_cleanup
           → debounce → rate_limit → unique → expiry → lifecycle → environment → telemetry → run (by the task's kind)

An app's own middleware take their places among them by these names.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from core.tasks import expiry, unique
from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.deadletters import record as record_dead_letter
from core.tasks.debounce import skip_superseded
from core.tasks.errors import PermanentTaskFailure, http_status_for
from core.tasks.outcome import Outcome
from core.tasks.pipeline import (
    Delivery,
    GivenUp,
    Proceed,
    cleanup_payload,
    decode,
    environment,
    guard_deadline,
    report,
    retry_warning,
    run,
    run_hooks,
    target_of,
    traced,
    track_lifecycle,
    verify,
)
from core.tasks.rate_limit import wait_for_rate
from core.tasks.registry import declare_builtin
from core.tasks.runtime import TaskRuntime

__all__ = ["DEAD_LETTER_KIND", "BUILTIN_MIDDLEWARE", "execute", "record_dead_letter"]

log = logging.getLogger(__name__)


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
                      "debounce": skip_superseded, "rate_limit": wait_for_rate, "unique": unique.step,
                      "expiry": expiry.step, "deadline": guard_deadline, "lifecycle": track_lifecycle,
                      "environment": environment,
                      "telemetry": traced, "run": run}
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
