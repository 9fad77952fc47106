"""The task pipeline's built-in middleware: what every request to ``/_tasks/*`` goes through.

Every kind of task (deferred, periodic, startup, queryIter, callable) runs through the same
middleware, and so does a cron ping (as a task of :data:`CRON_KIND`); the kind only chooses the
runner at the end. A middleware is ``step(delivery, proceed)``: it may do something before the
rest, answer without calling ``proceed`` (a refused request, a skipped task) or look at the
outcome after it, as dramatiq's middleware do around a message. The executor declares these,
in their order, as the built-ins of every app's pipeline (:mod:`core.tasks.middleware`), where
the app's own middleware take their places among them by name.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from core import current
from core.tasks import deadline, hooks, lifecycle, message, outbox, progress, telemetry
from core.tasks.context import enter_environment
from core.tasks.errors import (
    BadTaskRequest,
    LockHeld,
    PayloadError,
    PermanentTaskFailure,
    RequestError,
    TaskError,
    TaskNotFound,
    http_status_for,
)
from core.tasks.outcome import Outcome
from core.tasks.registry import TaskKind
from core.tasks.runtime import TaskRuntime

if TYPE_CHECKING:
    from core.tasks.auth.queue_headers import TaskInfo

log = logging.getLogger(__name__)

#: ViUR's default of ``TaskHandler.retryCountWarningThreshold``: from this retry on, each failure is an error log.
RETRY_WARNING_THRESHOLD = 25
#: The kind of a cron ping (``/_tasks/cron/<group>``) on its way through the pipeline.
CRON_KIND = "cron"


@dataclasses.dataclass(slots=True)
class Delivery:
    """One task request on its way through the steps; each step fills in what it learns."""

    runtime: TaskRuntime
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    expected_kinds: tuple[str, ...] | None
    #: The cron group of a cron ping (which runs as a task of :data:`CRON_KIND`), else ``None``.
    cron: str | None = None
    info: TaskInfo | None = None
    envelope: message.Envelope | None = None
    kind: TaskKind | None = None
    target: str | None = None
    attempt: lifecycle.Attempt | None = None
    #: The run's result as its record keeps it (tracked tasks).
    result: str | None = None

    def outcome(self, status: int = 200, text: str = "ok", **fields: Any) -> Outcome:
        """An outcome of this delivery's task (id, kind, target and queue info filled in)."""
        envelope = self.envelope
        return Outcome(status, text, task_id=envelope.id if envelope else None,
                       kind=envelope.kind if envelope else None, target=self.target, info=self.info, **fields)


class GivenUp(Exception):  # noqa: N818 - not an error of its own: it carries one to the dead-letter step
    """A failed run the lifecycle gave up on, on its way to the dead-letter step (never escapes)."""

    def __init__(self, error: PermanentTaskFailure) -> None:
        super().__init__(error)
        self.error = error


Proceed = Callable[[Delivery], Outcome]


def target_of(envelope: message.Envelope) -> str | None:
    """What a task is said to run: its payload's target, class or task, else its kind."""
    payload = envelope.payload
    for key in ("target", "class", "task"):
        value = payload.get(key) if isinstance(payload, dict) else None
        if isinstance(value, str):
            return value
    return envelope.kind


# --- the built-in middleware, outermost first -----------------------------------------------------

def report(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Every outcome goes to the hooks' ``after_run`` and to the runtime's outcome listeners."""
    started = time.perf_counter()
    outcome = proceed(delivery)
    outcome.duration = time.perf_counter() - started
    runtime = delivery.runtime
    hooks.after_run(runtime, outcome)
    runtime.notify(outcome)
    return outcome


def verified(check: Callable[..., TaskInfo | None], method: str, path: str, headers: Mapping[str, str],
             body: bytes, what: str) -> tuple[TaskInfo | None, Outcome | None]:
    """``(info, None)`` for a request ``check`` accepts, else ``(None, refusal)``: never raises.

    The one "verify" of task requests and cron pings (``what`` is ``task`` or ``cron``). A verifier
    that crashes refuses with a 400: a 5xx would make the queue retry forever.
    """
    try:
        return check(method, path, headers, body), None
    except RequestError as exc:
        log.warning("refused %s request to %s: %s", what, path, exc)
        return None, Outcome(exc.http_status, str(exc), error=exc)
    except Exception as exc:
        log.exception("%s request verification crashed", what)
        text = "unverifiable request" if what == "task" else f"unverifiable {what} request"
        return None, Outcome(400, text, error=BadTaskRequest(str(exc)))


def verify(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Only requests the verifier accepts (signature, queue headers, OIDC; a cron ping's own) go on."""
    verifier = delivery.runtime.verifier
    cron = delivery.cron is not None
    info, refusal = verified(verifier.verify_cron if cron else verifier.verify_task, delivery.method,
                             delivery.path, delivery.headers, delivery.body, "cron" if cron else "task")
    if refusal is not None:
        return refusal
    delivery.info = info
    return proceed(delivery)


def decode(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Parse the envelope and find its kind; anything wrong is a permanent failure (a dead letter).

    A cron ping has no envelope: it becomes one of :data:`CRON_KIND` naming its group.
    """
    kinds = delivery.runtime.registry.kinds
    if delivery.cron is not None:
        envelope = message.Envelope(kind=CRON_KIND, payload={"group": delivery.cron,
                                                             "target": f"cron/{delivery.cron}"}, queue="")
        delivery.envelope, delivery.kind, delivery.target = envelope, kinds.get(CRON_KIND), target_of(envelope)
        return proceed(delivery)
    envelope = message.decode(delivery.body)
    kind = kinds.find(envelope.kind)
    expected = delivery.expected_kinds
    if (envelope.kind not in expected) if expected is not None else (kind is None or delivery.path not in kind.routes):
        raise PayloadError(f"a {envelope.kind!r} task was sent to {delivery.path}")
    if kind is None:
        raise TaskNotFound(f"unknown task kind {envelope.kind!r}")
    delivery.envelope, delivery.kind, delivery.target = envelope, kind, target_of(envelope)
    return proceed(delivery)


def run_hooks(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The hooks' ``before_run`` (their ``after_run`` is the :func:`report` middleware's)."""
    hooks.before_run(delivery.runtime, delivery.envelope, delivery.target, delivery.info)  # type: ignore[arg-type]
    return proceed(delivery)


def warning_threshold(delivery: Delivery) -> int:
    """``retryCountWarningThreshold`` of the task handler mounted where the task was pushed (ViUR's contract)."""
    modules = delivery.runtime.modules
    handler = modules.get(delivery.path.rpartition("/")[0]) if modules is not None else None
    threshold = getattr(handler, "retryCountWarningThreshold", RETRY_WARNING_THRESHOLD)
    return threshold if isinstance(threshold, int) else RETRY_WARNING_THRESHOLD


def retry_warning(delivery: Delivery, proceed: Proceed) -> Outcome:
    """A task on the handler's warning retry or later logs an error; that retry mails the admin once."""
    info = delivery.info
    if info is not None and info.retry_count > 0:  # a first run is never warned of: no lookup on the hot path
        threshold = warning_threshold(delivery)
        if info.retry_count >= threshold:
            text = f"task {delivery.envelope.id if delivery.envelope else '?'} ({delivery.target}) is on retry " \
                   f"{info.retry_count}"
            log.error(text)
            mail = delivery.runtime.admin_mail
            if mail is not None and info.retry_count == threshold:
                try:
                    mail("Task keeps failing", text)
                except Exception:
                    log.exception("admin mail hook failed")
    return proceed(delivery)


def cleanup_payload(delivery: Delivery, proceed: Proceed) -> Outcome:
    """A stored payload is deleted once its task has run (a failed one is kept for the retry)."""
    outcome = proceed(delivery)
    if outcome.ran and delivery.envelope is not None:
        try:
            message.delete_stored(delivery.envelope)
        except Exception:
            log.exception("could not delete the stored payload of task %s", delivery.envelope.id)
    return outcome


def guard_deadline(delivery: Delivery, proceed: Proceed) -> Outcome:
    """A task with ``timeout=`` never runs twice at once because of it (see :mod:`core.tasks.deadline`)."""
    envelope, info = delivery.envelope, delivery.info
    timeout = deadline.timeout_of(envelope) if envelope is not None and delivery.cron is None else None
    if timeout is None or info is None:
        return proceed(delivery)
    assert envelope is not None
    key = deadline.claim_key(envelope, info)
    verdict = deadline.claim(key)
    if verdict == "busy":
        log.info("task %s (%s) is pushed again while its run goes on past its timeout; the queue will come back",
                 envelope.id, delivery.target)
        return delivery.outcome(409, "another run of this task is alive", skipped="another run of this task is alive")
    if verdict == "done":
        return delivery.outcome(200, "this task ran before; not run again", skipped="ran before; not run again")
    run = deadline.Claimed(key, timeout, f"task {envelope.id} ({delivery.target})")
    run.start()
    try:
        outcome = proceed(delivery)
    except GivenUp:
        run.end(True)  # answered 2xx as a dead letter: its queue task is over
        raise
    except BaseException:
        run.end(False)
        raise
    run.end(outcome.status < 300)
    return outcome


def track_lifecycle(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Claim the task's record and decide what a failure leads to (see :mod:`core.tasks.lifecycle`).

    A cron ping has no record and no retries: what it raises is its outcome, never a bare 500.
    """
    runtime, envelope, info = delivery.runtime, delivery.envelope, delivery.info
    if delivery.cron is not None:
        try:
            return proceed(delivery)
        except Exception as exc:
            status = http_status_for(exc)
            if status >= 500:
                log.exception("cron %s crashed", delivery.cron)
            return delivery.outcome(status, str(exc) if isinstance(exc, TaskError) else
                                    f"cron {delivery.cron} failed: {exc!r}", error=exc)
    assert envelope is not None and info is not None
    attempt = lifecycle.start(runtime, envelope, info, delivery.path, delivery.target)
    if attempt.skip is not None:
        return delivery.outcome(409 if attempt.busy else 200, attempt.skip, skipped=attempt.skip)
    delivery.attempt = attempt
    try:
        outcome = proceed(delivery)
        lifecycle.succeeded(runtime, attempt, delivery.result)
        return outcome
    except Exception as exc:
        if isinstance(exc, LockHeld) and envelope.kind == "deferred":
            return _wait_for_lock(delivery, attempt, exc)
        decision = lifecycle.failed(runtime, attempt, exc)
        if decision.action == "dead" and decision.error is not None:
            delivery.info = counted(info, attempt.number)
            raise GivenUp(decision.error) from None
        if decision.action != "retry":
            return delivery.outcome(200, f"{decision.action} after failing: {exc!r}", error=exc)
        log.warning("task %s (%s) failed on execution %d; the queue will retry it",
                    envelope.id, delivery.target, info.execution_count + 1, exc_info=True)
        return delivery.outcome(http_status_for(exc), f"failed: {exc!r}", error=exc)


def _wait_for_lock(delivery: Delivery, attempt: lifecycle.Attempt, held: LockHeld) -> Outcome:
    """A deferred task found its lock held: waiting is not failing (no attempt, no retry policy, no traceback)."""
    envelope, info = delivery.envelope, delivery.info
    assert envelope is not None and info is not None
    delay = lifecycle.wait_for_lock(delivery.runtime, attempt, info)
    if delay is None:
        log.info("task %s (%s) waits for its lock; the queue will try again: %s", envelope.id, delivery.target, held)
        return delivery.outcome(409, str(held), error=held)
    log.info("task %s (%s) waits for its lock; it looks again in %.2g s", envelope.id, delivery.target, delay)
    return delivery.outcome(200, f"waiting for its lock: {held}", skipped="waiting for its lock")


def counted(info: TaskInfo, attempts: int) -> TaskInfo:
    """``info`` counting every attempt of the task (self-scheduled ones included) for its dead letter."""
    if attempts <= info.execution_count + 1:
        return info
    return dataclasses.replace(info, execution_count=attempts - 1, retry_count=max(info.retry_count, attempts - 1))


def environment(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The rest runs as the caller: user (reloaded by id), language, custom environment, task info."""
    envelope = delivery.envelope
    assert envelope is not None
    token = progress.running.set(envelope.id)  # what report_progress() writes to
    try:
        entered = enter_environment(delivery.runtime, envelope.env, delivery.info)
        try:
            return proceed(delivery)
        finally:
            current.leave(entered)
    finally:
        progress.running.reset(token)


def traced(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The rest runs in the task's trace (a span linked to its enqueue, with OpenTelemetry)."""
    envelope = delivery.envelope
    assert envelope is not None
    lookup = delivery.runtime.tracing
    if lookup.tracer() is not None:
        with telemetry.run_span(envelope, delivery.target, lookup=lookup):
            return proceed(delivery)
    token = current.trace.set(telemetry.run_trace(envelope))  # no span to make: no context manager either
    try:
        return proceed(delivery)
    finally:
        current.trace.reset(token)


def run(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Run the task by its kind; the tasks it defers are sent together when it returns."""
    runtime, envelope, info, kind = delivery.runtime, delivery.envelope, delivery.info, delivery.kind
    assert envelope is not None and kind is not None
    with outbox.RequestScope(runtime):
        value = kind.run(runtime, envelope, info)
        if delivery.cron is not None and isinstance(value, Outcome):  # the cron run's report is its answer
            return delivery.outcome(value.status, value.message, error=value.error, data=value.data)
        if delivery.attempt is not None:
            delivery.result = lifecycle.encode_result(delivery.attempt, value)
    return delivery.outcome()
