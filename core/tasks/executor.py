"""Run one task request: verify → decode → restore the caller's environment → run → outcome.

Flask-free: the HTTP handler passes method, path, headers and body and turns the
:class:`Outcome` into a response; tests and the in-process queue can call it directly. The
status follows the one mapping in :mod:`core.tasks.errors`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from core import current, db
from core.reprs import safe_repr
from core.tasks import aio, arguments, dispatch, hooks, lifecycle, message, telemetry
from core.tasks.errors import (
    BadTaskRequest,
    PayloadError,
    PermanentTaskFailure,
    RequestError,
    TaskNotFound,
    http_status_for,
)
from core.tasks.runtime import TaskRuntime
from core.tasks.security import TaskInfo

log = logging.getLogger(__name__)

DEAD_LETTER_KIND = "_tasks_dead_letter"
#: Bytes of a task body a dead letter keeps (an entity holds at most 1 MiB); the rest is cut off.
DEAD_LETTER_PAYLOAD_BYTES = 900_000
#: Characters of error text and traceback a dead letter keeps.
DEAD_LETTER_TEXT_CHARS = 20_000
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

    @property
    def ran(self) -> bool:
        return self.target is not None and self.status < 300 and self.error is None and self.skipped is None


#: Runs a decoded envelope of one kind: ``(runtime, envelope, info) -> result``.
KindRunner = Callable[[TaskRuntime, message.Envelope, TaskInfo], Any]
_runners: dict[str, KindRunner] = {}


def register_kind(kind: str, runner: KindRunner) -> None:
    """Teach the executor a task kind (``deferred``, ``queryIter``, ``periodic``, ...)."""
    _runners[kind] = runner


def execute(runtime: TaskRuntime, *, method: str, path: str, headers: Mapping[str, str], body: bytes,
            expected_kinds: tuple[str, ...] | None = None) -> Outcome:
    """Verify and run one task request; never raises for anything the request contains."""
    try:
        info = runtime.verifier.verify_task(method, path, headers, body)
    except RequestError as exc:
        log.warning("refused task request to %s: %s", path, exc)
        return _finish(runtime, Outcome(exc.http_status, str(exc), error=exc))
    except Exception as exc:  # a verifier bug must not become a 5xx that Cloud Tasks retries forever
        log.exception("task request verification crashed")
        return _finish(runtime, Outcome(400, "unverifiable request", error=BadTaskRequest(str(exc))))

    try:
        envelope = message.decode(body)
        if expected_kinds is not None and envelope.kind not in expected_kinds:
            raise PayloadError(f"a {envelope.kind!r} task was sent to {path}")
        runner = _runners.get(envelope.kind)
        if runner is None:
            raise TaskNotFound(f"unknown task kind {envelope.kind!r}")
    except PermanentTaskFailure as exc:
        return _finish(runtime, _permanent(runtime, exc, info, path, body, None))

    outcome = Outcome(200, "ok", task_id=envelope.id, kind=envelope.kind, info=info,
                      target=_target_of(envelope))
    hooks.before_run(runtime, envelope, outcome.target, info)
    if info.retry_count >= RETRY_WARNING_THRESHOLD:
        text = f"task {envelope.id} ({outcome.target}) is on retry {info.retry_count}"
        log.error(text)
        if runtime.admin_mail is not None and info.retry_count == RETRY_WARNING_THRESHOLD:
            _safe(runtime.admin_mail, "Task keeps failing", text)
    attempt = lifecycle.start(runtime, envelope, info, path, outcome.target)
    if attempt.skip is not None:
        outcome.status, outcome.message, outcome.skipped = 409 if attempt.busy else 200, attempt.skip, attempt.skip
        return _finish(runtime, outcome)
    try:
        with restored_environment(runtime, envelope.env, info), telemetry.run_span(envelope, outcome.target), \
                dispatch.request_scope(runtime):
            result = lifecycle.encode_result(attempt, runner(runtime, envelope, info))
        lifecycle.succeeded(runtime, attempt, result)
    except Exception as exc:
        decision = lifecycle.failed(runtime, attempt, exc)
        if decision.action == "dead" and decision.error is not None:
            return _finish(runtime, _permanent(runtime, decision.error, _counted(info, attempt.number), path, body,
                                               envelope))
        if decision.action != "retry":
            outcome.message, outcome.error = f"{decision.action} after failing: {exc!r}", exc
            return _finish(runtime, outcome)
        log.warning("task %s (%s) failed on execution %d; the queue will retry it",
                    envelope.id, outcome.target, info.execution_count + 1, exc_info=True)
        outcome.status, outcome.message, outcome.error = http_status_for(exc), f"failed: {exc!r}", exc
        return _finish(runtime, outcome)
    try:
        message.delete_stored(envelope)
    except Exception:
        log.exception("could not delete the stored payload of task %s", envelope.id)
    return _finish(runtime, outcome)


def _counted(info: TaskInfo, attempts: int) -> TaskInfo:
    """``info`` counting every attempt of the task (self-scheduled ones included) for its dead letter."""
    if attempts <= info.execution_count + 1:
        return info
    return dataclasses.replace(info, execution_count=attempts - 1, retry_count=max(info.retry_count, attempts - 1))


def _finish(runtime: TaskRuntime, outcome: Outcome) -> Outcome:
    hooks.after_run(runtime, outcome)
    runtime.notify(outcome)
    return outcome


def _target_of(envelope: message.Envelope) -> str | None:
    payload = envelope.payload
    for key in ("target", "class", "task"):
        value = payload.get(key) if isinstance(payload, dict) else None
        if isinstance(value, str):
            return value
    return envelope.kind


def _safe(func: Callable[..., Any], *args: Any) -> None:
    try:
        func(*args)
    except Exception:
        log.exception("admin mail hook failed")


def _permanent(runtime: TaskRuntime, exc: PermanentTaskFailure, info: TaskInfo, path: str, body: bytes,
               envelope: message.Envelope | None) -> Outcome:
    """Record a dead letter and answer 2xx so the queue stops retrying."""
    target = _target_of(envelope) if envelope is not None else None
    log.error("task %s (%s) failed permanently: %s", envelope.id if envelope else "?", target, exc)
    try:
        key = record_dead_letter(path=path, body=body, error=exc, info=info, envelope=envelope)
    except Exception as store_error:
        # Answering 2xx now would lose the evidence: the queue delivers the task again instead.
        log.exception("could not record the dead letter of task %s; the queue will deliver it again",
                      envelope.id if envelope else "?")
        return Outcome(500, f"permanent failure, dead letter not stored: {store_error!r}",
                       task_id=envelope.id if envelope else None, kind=envelope.kind if envelope else None,
                       target=target, error=store_error, info=info)
    return Outcome(http_status_for(exc), f"permanent failure: {exc}", task_id=envelope.id if envelope else None,
                   kind=envelope.kind if envelope else None, target=target, error=exc, info=info,
                   dead_letter=key)


def record_dead_letter(*, path: str, body: bytes, error: BaseException, info: TaskInfo,
                       envelope: message.Envelope | None) -> db.Key:
    """Store a dead letter; what does not fit in one entity is kept truncated, with its size and SHA-256."""
    entity = db.Entity(db.key(DEAD_LETTER_KIND), exclude_from_indexes=("payload", "traceback", "error",
                                                                        "payload_sha256"))
    stored = body[:DEAD_LETTER_PAYLOAD_BYTES]
    entity.update({
        "task_id": _clip(envelope.id, 300) if envelope else None,
        "kind": _clip(envelope.kind, 300) if envelope else None,
        "target": _clip(_target_of(envelope), 300) if envelope else None,
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


@contextlib.contextmanager
def restored_environment(runtime: TaskRuntime, env: Mapping[str, Any], info: TaskInfo | None) -> Iterator[None]:
    """Set the caller's user (reloaded by id), language and custom environment for the block."""
    user_id = env.get("user")
    user = runtime.users.load_by_id(user_id) if user_id is not None else None
    tokens = [(current.user, current.user.set(user)), (current.language, current.language.set(env.get("language"))),
              (current.task, current.task.set(info))]
    try:
        if runtime.environment is not None and "custom" in env:
            runtime.environment.restore(env["custom"])
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def run_deferred(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo) -> None:
    """Run a ``deferred`` envelope: find the target by name, the instance by path, call it."""
    from core.tasks.deferred import DeferredTarget

    call = envelope.payload
    name = call.get("target")
    if not isinstance(name, str):
        raise TaskNotFound(f"a deferred call names no target but {safe_repr(name)}")
    target: DeferredTarget = runtime.registry.deferred.get(name)
    args, kwargs = call.get("args") or [], call.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PayloadError("deferred call arguments are malformed")
    if target.max_executions is not None and info.execution_count >= target.max_executions:
        raise PermanentTaskFailure(
            f"{target.name} already ran {info.execution_count} time(s), its limit is {target.max_executions}")
    bound: tuple[Any, ...] = ()
    if target.kind == "method":
        path = call.get("instance")
        instance = runtime.modules.get(path) if runtime.modules is not None and isinstance(path, str) else None
        if instance is None:
            raise TaskNotFound(f"no module is mounted at {safe_repr(path)} for {target.name}")
        owner = target.owner
        if owner is not None and not isinstance(instance, owner):
            raise TaskNotFound(f"the module at {path!r} is not a {owner.__qualname__}")
        bound = (instance,)
    elif target.kind == "classmethod":
        if target.owner is None:
            raise TaskNotFound(f"{target.name} has no class")
        bound = (target.owner,)
    arguments.check_call(target.func, target.name, bound, args, kwargs)
    try:
        return aio.call(target.func, *bound, *args, **kwargs)
    except PermanentTaskFailure:
        raise
    except Exception as exc:
        if target.max_executions is not None and info.execution_count + 1 >= target.max_executions:
            raise PermanentTaskFailure(
                f"{target.name} failed on its last allowed execution ({target.max_executions}): {exc!r}") from exc
        raise


register_kind("deferred", run_deferred)
