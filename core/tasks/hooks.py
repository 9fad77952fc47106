"""Task hooks, the public face of the task pipeline's middleware: code around every task, app-wide or for one.

A hook is any object with some of these methods (:class:`TaskHook` has them all, doing nothing)::

    before_enqueue(task)         a task is about to be sent (any kind, a retry, a step, a resend)
    before_run(task)             a task is about to run (verified and decoded)
    on_failure(task, error)      the task raised (it will be retried or given up)
    on_dead_letter(task, outcome)  the task was given up and recorded as a dead letter
    after_run(task, outcome)     the task's request has its outcome (always, last)

``task`` is a :class:`TaskCall`; ``outcome`` the executor's ``Outcome`` (status, message,
error, dead letter). App-wide hooks (``runtime.add_hook(...)`` or ``create_app(hooks=[...])``)
and a task's own (``@callDeferred(hooks=[...])``) both run: app-wide first before the task, the
task's own first after it (as layers around the task). A hook that raises is logged and skipped:
the task is still sent, still runs and keeps its outcome. A cron ping is a task of kind ``cron``
to them (target ``cron/<group>``).

The run side is middleware of the app's pipeline (:mod:`core.tasks.middleware`): the app-wide and
per-task hooks run in its built-in ``hooks`` and ``report`` middleware, and a hook given to
``add_middleware`` becomes a middleware of its own (:class:`HookMiddleware`), placed by name.
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from core.tasks.errors import LockHeld

if TYPE_CHECKING:
    from core.tasks.auth.queue_headers import TaskInfo
    from core.tasks.message import Envelope
    from core.tasks.outcome import Outcome

log = logging.getLogger(__name__)


class HookHost(Protocol):
    """What hooks read of an app's runtime (:class:`core.tasks.runtime.TaskRuntime` is one): its
    app-wide hooks and its registry. A protocol, so that this room does not import the runtime."""

    hooks: list[Any]
    registry: Any

HOOK_METHODS = ("before_enqueue", "before_run", "after_run", "on_failure", "on_dead_letter")
#: The methods of a hook that run around a task's run (the rest run when it is sent).
RUN_METHODS = ("before_run", "after_run", "on_failure", "on_dead_letter")


class TaskHook:
    """Base class of a hook: override the methods you need."""

    #: A hook that concerns only the tasks whose payload carries this field names it (the workflows'
    #: hook: ``workflow``): it is not called for other tasks, which pay nothing for it.
    payload_field: str | None = None

    def before_enqueue(self, task: TaskCall) -> None:
        """A task is about to be sent (inside a transaction: it is sent if that commits)."""

    def before_run(self, task: TaskCall) -> None:
        """The task is about to run."""

    def after_run(self, task: TaskCall, outcome: Outcome) -> None:
        """The task's request ended with ``outcome`` (success, failure, dead letter or lock held)."""

    def on_failure(self, task: TaskCall, error: BaseException) -> None:
        """The task raised ``error``."""

    def on_dead_letter(self, task: TaskCall, outcome: Outcome) -> None:
        """The task was given up; ``outcome.dead_letter`` is the key of its dead letter."""


@dataclasses.dataclass
class TaskCall:
    """One task as hooks see it. ``scratch`` is a hook's own space from ``before_run`` to ``after_run``."""

    id: str | None
    kind: str | None
    target: str | None
    queue: str | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str | None = None
    #: The dedupe name and schedule of an enqueued call.
    name: str | None = None
    eta: datetime.datetime | None = None
    #: What the queue says about the run (attempts); ``None`` before the task is sent.
    info: TaskInfo | None = None
    #: The task's whole decoded payload (read it, don't change it): fields beyond the call's own.
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    scratch: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ... (0 before the task is sent)."""
        return 0 if self.info is None else self.info.execution_count + 1


def check_hooks(hooks: Iterable[Any] | None, what: str) -> tuple[Any, ...]:
    """Validate ``hooks=`` at decoration: objects with at least one hook method."""
    if hooks is None:
        return ()
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(f"{what}: hooks must be a list of hook objects, got {hooks!r}")
    found = tuple(hooks)
    for hook in found:
        if not any(callable(getattr(hook, method, None)) for method in HOOK_METHODS):
            raise TypeError(f"{what}: {hook!r} has none of the hook methods {', '.join(HOOK_METHODS)}")
    return found


def _own_hooks(runtime: HookHost, target: str | None) -> Sequence[Any]:
    found = runtime.registry.deferred.find(target) if target else None
    return getattr(found, "hooks", ()) or ()


def _concerned(hooks: Iterable[Any], payload: Any) -> list[Any]:
    """The hooks that concern a task with ``payload`` (see :attr:`TaskHook.payload_field`)."""
    fields = payload if isinstance(payload, dict) else {}
    return [hook for hook in hooks if (field := getattr(hook, "payload_field", None)) is None or field in fields]


def _call(hooks: Iterable[Any], method: str, *args: Any) -> None:
    for hook in hooks:
        func = getattr(hook, method, None)
        if func is None:
            continue
        try:
            func(*args)
        except Exception:
            log.exception("task hook %r failed in %s; the task goes on", hook, method)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, (list, tuple)) else ()


def call_of(envelope: Envelope, target: str | None, info: TaskInfo | None = None, *,
            name: str | None = None, eta: datetime.datetime | None = None) -> TaskCall:
    """The :class:`TaskCall` of an envelope (the deferred call's arguments, tags and description)."""
    payload = envelope.payload if isinstance(envelope.payload, dict) else {}
    args, kwargs = payload.get("args"), payload.get("kwargs")
    description = payload.get("description")
    return TaskCall(id=envelope.id, kind=envelope.kind, target=target, queue=envelope.queue,
                    args=tuple(args) if isinstance(args, list) else (),
                    kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
                    tags=_strings(payload.get("tags")),
                    description=description if isinstance(description, str) else None,
                    name=name, eta=eta, info=info, payload=payload)


def before_enqueue(runtime: HookHost, envelope: Envelope, target: str | None, *,
                   name: str | None, eta: datetime.datetime | None) -> None:
    """Run ``before_enqueue`` of the app's hooks, then the task's own (every task the app sends)."""
    own = _own_hooks(runtime, target)
    if not runtime.hooks and not own:
        return
    hooks = _concerned([*runtime.hooks, *own], envelope.payload)
    if hooks:
        _call(hooks, "before_enqueue", call_of(envelope, target, name=name, eta=eta))


_running: contextvars.ContextVar[TaskCall | None] = contextvars.ContextVar("core_task_hook_call", default=None)


def before_run(runtime: HookHost, envelope: Envelope, target: str | None, info: TaskInfo) -> None:
    """Run ``before_run`` hooks and remember the task for :func:`after_run` of this request."""
    hooks = _concerned([*runtime.hooks, *_own_hooks(runtime, target)], envelope.payload)
    if not hooks:
        _running.set(None)
        return
    task = call_of(envelope, target, info)
    _running.set(task)
    _call(hooks, "before_run", task)


def after_run(runtime: HookHost, outcome: Outcome) -> None:
    """Run the outcome hooks of one request: ``on_failure``, ``on_dead_letter``, ``after_run``.

    A request refused before it became a task (unverifiable) runs none; a dead letter of a body
    that could not be decoded runs the app's hooks with what is known (no target, no arguments).
    """
    task = _running.get()
    _running.set(None)
    if task is None or task.id != outcome.task_id:
        if outcome.dead_letter is None or not runtime.hooks:
            return
        task = TaskCall(id=outcome.task_id, kind=outcome.kind, target=outcome.target,
                        queue=outcome.info.queue if outcome.info else None, info=outcome.info)
    _ended(_concerned([*reversed(_own_hooks(runtime, task.target)), *reversed(runtime.hooks)], task.payload),
           task, outcome)


def _ended(hooks: Sequence[Any], task: TaskCall, outcome: Outcome) -> None:
    if outcome.error is not None and not isinstance(outcome.error, LockHeld):
        _call(hooks, "on_failure", task, outcome.error)
    if outcome.dead_letter is not None:
        _call(hooks, "on_dead_letter", task, outcome)
    _call(hooks, "after_run", task, outcome)


def as_middleware(obj: Any) -> Any:
    """``obj`` as a pipeline middleware: a hook (no ``step`` of its own) becomes a :class:`HookMiddleware`."""
    if not callable(getattr(obj, "step", None)) and any(callable(getattr(obj, m, None)) for m in RUN_METHODS):
        return HookMiddleware(obj)
    return obj


class HookMiddleware:
    """A hook as a middleware of the pipeline: ``before_run``, the rest, then its outcome methods.

    Placed before ``decode`` it sees the request before there is a task: its ``before_run`` is
    skipped and the outcome methods get what the outcome knows.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.name = getattr(hook, "name", None) or type(hook).__name__

    def step(self, delivery: Any, proceed: Callable[[Any], Outcome]) -> Outcome:
        envelope = delivery.envelope
        task = call_of(envelope, delivery.target, delivery.info) if envelope is not None else None
        if task is not None:
            _call([self.hook], "before_run", task)
        outcome = proceed(delivery)
        if task is None:
            task = TaskCall(id=outcome.task_id, kind=outcome.kind, target=outcome.target,
                            queue=outcome.info.queue if outcome.info else None, info=outcome.info)
        _ended([self.hook], task, outcome)
        return outcome
