"""The task pipeline: one request to ``/_tasks/*`` goes through an ordered list of steps.

Every kind of task (deferred, periodic, startup, queryIter, callable) runs through the same
steps; the kind only chooses the runner at the end. A step is ``step(delivery, proceed)``: it may
do something before the rest, answer without calling ``proceed`` (a refused request, a skipped
task) or look at the outcome after it, as dramatiq's middleware do around a message (``before``
in order, ``after`` in reverse). The executor assembles the default list; the steps here are the
kind-agnostic ones: verify, decode, the hooks, the retry warning, the lifecycle records, payload
cleanup, the restored environment and the run.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core import db
from core.tasks import dispatch, hooks, lifecycle, message, telemetry
from core.tasks.context import restored_environment
from core.tasks.errors import (
    BadTaskRequest,
    PayloadError,
    PermanentTaskFailure,
    RequestError,
    TaskNotFound,
    http_status_for,
)
from core.tasks.registry import TaskKind
from core.tasks.runtime import TaskRuntime

if TYPE_CHECKING:
    from core.tasks.auth.queue_headers import TaskInfo

log = logging.getLogger(__name__)

#: ViUR's ``TaskHandler.retryCountWarningThreshold``: from this retry on, each failure is an error log.
RETRY_WARNING_THRESHOLD = 25


@dataclasses.dataclass
class Outcome:
    """What became of one request to ``/_tasks/*``."""

    status: int
    message: str
    task_id: str | None = None
    kind: str | None = None
    target: str | None = None
    error: BaseException | None = None
    info: TaskInfo | None = None
    #: Key of the dead letter recorded for a permanent failure.
    dead_letter: db.Key | None = None
    #: Why the task was answered without running (it ended before, was cancelled, runs elsewhere).
    skipped: str | None = None
    #: Seconds from the request's arrival in the pipeline to its outcome.
    duration: float | None = None

    @property
    def ran(self) -> bool:
        return self.target is not None and self.status < 300 and self.error is None and self.skipped is None


@dataclasses.dataclass(slots=True)
class Delivery:
    """One task request on its way through the steps; each step fills in what it learns."""

    runtime: TaskRuntime
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    expected_kinds: tuple[str, ...] | None
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
Step = Callable[[Delivery, Proceed], Outcome]


def chain(steps: Sequence[Step]) -> Proceed:
    """The steps as one callable, the first one outermost."""
    def end(delivery: Delivery) -> Outcome:
        raise RuntimeError("the pipeline has no run step")

    proceed: Proceed = end
    for step in reversed(steps):
        proceed = functools.partial(step, proceed=proceed)  # type: ignore[call-arg]
    return proceed


def target_of(envelope: message.Envelope) -> str | None:
    """What a task is said to run: its payload's target, class or task, else its kind."""
    payload = envelope.payload
    for key in ("target", "class", "task"):
        value = payload.get(key) if isinstance(payload, dict) else None
        if isinstance(value, str):
            return value
    return envelope.kind


# --- the steps ----------------------------------------------------------------------------------------

def report(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Every outcome goes to the hooks' ``after_run`` and to the runtime's outcome listeners."""
    started = time.perf_counter()
    outcome = proceed(delivery)
    outcome.duration = time.perf_counter() - started
    runtime = delivery.runtime
    hooks.after_run(runtime, outcome)
    runtime.notify(outcome)
    return outcome


def verified(check: Callable[..., TaskInfo], method: str, path: str, headers: Mapping[str, str], body: bytes,
             what: str) -> tuple[TaskInfo | None, Outcome | None]:
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
    """Only requests the verifier accepts (signature, queue headers, OIDC) go on."""
    info, refusal = verified(delivery.runtime.verifier.verify_task, delivery.method, delivery.path,
                             delivery.headers, delivery.body, "task")
    if refusal is not None:
        return refusal
    delivery.info = info
    return proceed(delivery)


def decode(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Parse the envelope and find its kind; anything wrong is a permanent failure (a dead letter)."""
    envelope = message.decode(delivery.body)
    kind = delivery.runtime.registry.kinds.find(envelope.kind)
    expected = delivery.expected_kinds
    if (envelope.kind not in expected) if expected is not None else (kind is None or delivery.path not in kind.routes):
        raise PayloadError(f"a {envelope.kind!r} task was sent to {delivery.path}")
    if kind is None:
        raise TaskNotFound(f"unknown task kind {envelope.kind!r}")
    delivery.envelope, delivery.kind, delivery.target = envelope, kind, target_of(envelope)
    return proceed(delivery)


def run_hooks(delivery: Delivery, proceed: Proceed) -> Outcome:
    """The hooks' ``before_run`` (their ``after_run`` is the :func:`report` step's)."""
    hooks.before_run(delivery.runtime, delivery.envelope, delivery.target, delivery.info)  # type: ignore[arg-type]
    return proceed(delivery)


def retry_warning(delivery: Delivery, proceed: Proceed) -> Outcome:
    """A task on its 25th retry or later logs an error; the 25th mails the admin once."""
    info = delivery.info
    if info is not None and info.retry_count >= RETRY_WARNING_THRESHOLD:
        text = f"task {delivery.envelope.id if delivery.envelope else '?'} ({delivery.target}) is on retry " \
               f"{info.retry_count}"
        log.error(text)
        mail = delivery.runtime.admin_mail
        if mail is not None and info.retry_count == RETRY_WARNING_THRESHOLD:
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


def track_lifecycle(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Claim the task's record and decide what a failure leads to (see :mod:`core.tasks.lifecycle`)."""
    runtime, envelope, info = delivery.runtime, delivery.envelope, delivery.info
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
        decision = lifecycle.failed(runtime, attempt, exc)
        if decision.action == "dead" and decision.error is not None:
            delivery.info = counted(info, attempt.number)
            raise GivenUp(decision.error) from None
        if decision.action != "retry":
            return delivery.outcome(200, f"{decision.action} after failing: {exc!r}", error=exc)
        log.warning("task %s (%s) failed on execution %d; the queue will retry it",
                    envelope.id, delivery.target, info.execution_count + 1, exc_info=True)
        return delivery.outcome(http_status_for(exc), f"failed: {exc!r}", error=exc)


def counted(info: TaskInfo, attempts: int) -> TaskInfo:
    """``info`` counting every attempt of the task (self-scheduled ones included) for its dead letter."""
    if attempts <= info.execution_count + 1:
        return info
    return dataclasses.replace(info, execution_count=attempts - 1, retry_count=max(info.retry_count, attempts - 1))


def run(delivery: Delivery, proceed: Proceed) -> Outcome:
    """Run the task by its kind, as the caller (user, language, environment), with its trace."""
    runtime, envelope, info, kind = delivery.runtime, delivery.envelope, delivery.info, delivery.kind
    assert envelope is not None and kind is not None and delivery.attempt is not None
    with restored_environment(runtime, envelope.env, info), telemetry.run_span(envelope, delivery.target), \
            dispatch.RequestScope(runtime):
        delivery.result = lifecycle.encode_result(delivery.attempt, kind.run(runtime, envelope, info))
    return delivery.outcome()
