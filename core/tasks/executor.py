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

from core.tasks import deadline, debounce, expiry, rate_limit, unique
from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.deadletters import record as record_dead_letter
from core.tasks.errors import PermanentTaskFailure, http_status_for
from core.tasks.middleware import Gated, Shaping
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


#: The payload fields that call for a :class:`Gated` built-in, by its flag (the field's name).
GATED_FIELDS = frozenset({debounce.FIELD, rate_limit.FIELD, unique.FIELD, expiry.FIELD, deadline.FIELD})
#: The flag of a task whose payload is stored apart (its ``payload_cleanup`` deletes it after the run).
STORED = "stored payload"


def shape(delivery: Delivery) -> frozenset[str]:
    """The gated built-ins a decoded delivery needs: those whose payload field it carries (a cron ping: none)."""
    envelope = delivery.envelope
    if envelope is None or delivery.cron is not None:
        return frozenset()
    flags = GATED_FIELDS.intersection(envelope.payload)
    return flags | {STORED} if envelope.stored_payload is not None else flags


#: The built-in middleware of every app's pipeline, by name, outermost first. Past ``decode`` (the
#: :class:`Shaping` one), a task passes a :class:`Gated` one only if its :func:`shape` holds the flag.
BUILTIN_MIDDLEWARE = {
    "report": report, "verify": verify, "dead_letters": dead_letters, "decode": Shaping(decode, shape),
    "hooks": run_hooks, "retry_warning": retry_warning, "payload_cleanup": Gated(cleanup_payload, STORED),
    "debounce": Gated(debounce.skip_superseded, debounce.FIELD),
    "rate_limit": Gated(rate_limit.wait_for_rate, rate_limit.FIELD), "unique": Gated(unique.step, unique.FIELD),
    "expiry": Gated(expiry.step, expiry.FIELD), "deadline": Gated(guard_deadline, deadline.FIELD),
    "lifecycle": track_lifecycle, "environment": environment, "telemetry": traced, "run": run,
}
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
