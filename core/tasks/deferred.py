"""``@callDeferred``: calling the function queues a task that runs it later, elsewhere, once.

Works on module-level functions, static and class methods, and methods of modules mounted in the
module tree; a method runs on the live instance mounted at the same path, never on a copy of
``self``. Keyword options at the call::

    recompute_totals(month="2026-10", _queue="background", _countdown=60)

``_queue``, ``_countdown`` (seconds) or ``_eta`` (datetime; not both), ``_name`` (dedupe name),
``_target_version`` (App Engine version), ``_call_deferred=False`` (run now, in this process),
``_track`` (give this call a task record, or not, whatever the function and queue say),
``_require_user`` (this call runs only while its user exists, or not, whatever the function says).
``_expires`` (this call's ``expires=``, :mod:`core.tasks.expiry`), ``_unique`` (``False``: not unique
this time; ``True`` or a key string: unique, :mod:`core.tasks.unique`).
An ``async def`` target is awaited to completion when it runs (see :mod:`core.tasks.aio`).
Arguments must survive ``core.json``; a value that can't raises :class:`DeferredArgumentError`
here, at the call, naming the argument as the caller wrote it and where in it the value sits
(``send_mail(attachment=...)[1]: cannot serialize object of type TextIOWrapper``). The call
returns a :class:`TaskHandle`.

Options of the decorator: ``queue=`` or ``priority=`` (a queue through the priority mapping),
``tags=`` and ``description=`` (carried in the task's payload), ``hooks=`` (this task's own
hooks, :mod:`core.tasks.hooks`), ``lock=`` and ``lock_lease=`` (:mod:`core.tasks.locks`),
``debounce=`` and ``debounce_key=`` (per call ``_debounce``; :mod:`core.tasks.debounce`), ``rate_limit=``
and ``rate_key=`` (:mod:`core.tasks.rate_limit`).
``expires=`` (a duration or an aware datetime: not started by then, never run; :mod:`core.tasks.expiry`),
``unique=``, ``unique_for=`` and ``unique_key=`` (one pending or running task per key; :mod:`core.tasks.unique`).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from core import json as tagged_json
from core.reprs import safe_repr
from core.tasks import aio, arguments, message
from core.tasks import unique as uniqueness
from core.tasks.context import capture_environment, require_caller
from core.tasks.deadline import MAX_TIMEOUT
from core.tasks.debounce import DebouncedCall, DebounceSpec, debounce_spec, debounced_call, send_latest
from core.tasks.errors import (
    ConfigurationError,
    DeferredArgumentError,
    PayloadError,
    PermanentTaskFailure,
    TaskNotFound,
    UnsupportedTargetError,
)
from core.tasks.expiry import FIELD as EXPIRES_FIELD
from core.tasks.expiry import check_expires, expiry_moment
from core.tasks.give_up import GiveUpMail
from core.tasks.hooks import check_hooks
from core.tasks.locks import LockSpec, lock_name, lock_spec, locked
from core.tasks.priority import check_priority, check_tags, queue_of
from core.tasks.rate_limit import RateLimit, rate_limit_spec, rate_marker
from core.tasks.registry import declare, declare_builtin, declare_kind, qualified_name
from core.tasks.retry import RetryPolicy
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.send import send
from core.tasks.task_handle import TaskHandle
from core.tasks.transports.base import MAX_SCHEDULE_AHEAD
from core.tasks.workflows.signatures import Signature, signature

if TYPE_CHECKING:
    from core.tasks.auth.queue_headers import TaskInfo

__all__ = ["TaskHandle", "callDeferred", "CallDeferred", "call_deferred", "DeferredTarget", "DeferredFunction",
           "defer", "retry_n_times", "noRetry", "no_retry"]

DEFERRED_PATH = "/_tasks/deferred"
_OPTIONS = ("_queue", "_countdown", "_eta", "_name", "_target_version", "_call_deferred", "_track", "_require_user",
            "_debounce", "_expires", "_unique")


@dataclasses.dataclass
class DeferredTarget:
    """A registered deferred function. ``kind`` is function, method, classmethod or staticmethod."""

    name: str
    func: Callable[..., Any]
    kind: str
    queue: str | None = None
    owner: type | None = None
    #: ``retry_n_times`` / ``noRetry``: executions allowed before the task is given up.
    max_executions: int | None = None
    #: ``retry_n_times(email_recipients=..., tpl=...)``: who is mailed when the task gives up.
    give_up_mail: GiveUpMail | None = None
    #: The task's own hooks, run after the app's before it and before them after it.
    hooks: tuple[Any, ...] = ()
    lock: LockSpec | None = None
    priority: str | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None
    #: Every call gets a task record (``@callDeferred(track=True)``).
    track: bool = False
    #: ``max_attempts``, ``retry_on`` and ``backoff`` of the decorator.
    policy: RetryPolicy | None = None
    #: Seconds the queue waits for one attempt's answer (its dispatch deadline).
    timeout: float | None = None
    #: The task runs only while the user who deferred it exists (``@callDeferred(require_user=True)``).
    require_user: bool = False
    debounce: DebounceSpec | None = None
    rate_limit: RateLimit | None = None
    #: ``expires=``: a duration from the call, or a moment, after which the task is not started.
    expires: datetime.timedelta | datetime.datetime | None = None
    #: ``unique=`` / ``unique_for=`` / ``unique_key=``: at most one pending or running task per key.
    unique: uniqueness.UniqueSpec | None = None


class DeferredFunction:
    """The object ``@callDeferred`` returns; a descriptor so that methods bind like methods."""

    def __init__(self, func: Any, *, queue: str | None = None, track: bool = False, max_attempts: int | None = None,
                 retry_on: Any = None, backoff: Any = None, timeout: float | None = None, builtin: bool = False,
                 require_user: bool = False, expires: Any = None, unique: bool = False, unique_for: Any = None,
                 unique_key: Any = None, **options: Any) -> None:
        kind = "function"
        if isinstance(func, classmethod):
            kind, func = "classmethod", func.__func__
        elif isinstance(func, staticmethod):
            kind, func = "staticmethod", func.__func__
        elif "." in func.__qualname__:
            kind = "method"
        if not callable(func):
            raise TypeError(f"@callDeferred needs a function, got {func!r}")
        aio.check_runnable(func, "deferred function")
        name = qualified_name(func)
        policy = RetryPolicy.build(f"@callDeferred on {name}", max_attempts=max_attempts, retry_on=retry_on,
                                   backoff=backoff)
        self.target = DeferredTarget(name, func, kind, queue, max_executions=getattr(func, "_max_executions", None),
                                     give_up_mail=getattr(func, "_give_up_mail", None),
                                     track=bool(track), policy=policy, timeout=_check_timeout(name, timeout),
                                     require_user=bool(require_user),
                                     expires=check_expires(expires, f"@callDeferred on {name}"),
                                     unique=uniqueness.unique_spec(unique, unique_for, unique_key,
                                                                   f"@callDeferred on {name}"))
        _configure(self.target, **options)
        # The library's own targets are built-ins: every app's registry has them.
        (declare_builtin if builtin else declare)("deferred", self.target.name, self.target)
        functools.update_wrapper(self, func)

    def __set_name__(self, owner: type, name: str) -> None:
        self.target.owner = owner

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if self.target.kind == "method" and isinstance(instance, type):
            raise self._classmethod_outside()  # Python up to 3.12: classmethod binds what it wraps to the class
        if self.target.kind == "classmethod":
            return functools.partial(self._call, owner, None)
        if self.target.kind == "staticmethod" or instance is None:
            return self
        return functools.partial(self._call, instance, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.target.kind == "method" and args and isinstance(args[0], type):
            raise self._classmethod_outside()  # Python 3.13+: classmethod calls what it wraps with the class
        if self.target.kind == "method":
            raise TypeError(f"{self.target.name} is a deferred method: call it on a module instance")
        return self._call(None, None, *args, **kwargs)

    def _call(self, bound: Any, instance: Any, *args: Any, **kwargs: Any) -> Any:
        options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs} if kwargs else {}
        if options.get("_call_deferred", True) is False:
            if bound is None:
                return aio.call(self.target.func, *args, **kwargs)
            return aio.call(self.target.func, bound, *args, **kwargs)
        if self.target.lock is not None:  # a template the arguments cannot fill fails here, not in the task
            lock_name(self.target.lock, self.target.func, self.target.name,
                      args if bound is None else (bound, *args), kwargs)
        return defer(get_runtime(), self.target, args, kwargs, instance=instance, check_call=True, **options)

    def _classmethod_outside(self) -> UnsupportedTargetError:
        """``@classmethod`` above ``@callDeferred`` hides the class from the decorator (and so from the
        task, which would look for a mounted instance): refused at the first use, with the fix."""
        return UnsupportedTargetError(
            f"{self.target.name}: @classmethod is written above @callDeferred, so the task cannot know it is a "
            f"class method; write @callDeferred above @classmethod")

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """The signature of this call, to run later in a group or chain (arguments checked now)."""
        return signature(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self.target.name}>"


def callDeferred(func: Any = None, *, queue: str | None = None, priority: str | None = None,  # noqa: N802
                 tags: Iterable[str] = (), description: str | None = None, hooks: Iterable[Any] | None = None,
                 lock: str | bool | None = None, lock_lease: float | datetime.timedelta | None = None,
                 track: bool = False, max_attempts: int | None = None, retry_on: Any = None, backoff: Any = None,
                 timeout: float | None = None, require_user: bool = False,
                 debounce: datetime.timedelta | float | None = None, debounce_key: str | None = None,
                 rate_limit: str | None = None, rate_key: str | None = None,
                 expires: float | datetime.timedelta | datetime.datetime | None = None, unique: bool = False,
                 unique_for: float | datetime.timedelta | None = None,
                 unique_key: Callable[..., Any] | None = None) -> Any:
    """Decorator: calling the function queues it as a task (``@callDeferred`` or ``@callDeferred(queue=...)``).

    ViUR's name. A bad option raises here, at decoration, naming the function. ``track`` gives every
    call a task record (status, result, cancel through its handle); ``max_attempts``, ``retry_on``
    and ``backoff`` are its retry policy (:mod:`core.tasks.retry`); ``timeout`` (seconds) is the
    dispatch deadline of each attempt; ``require_user`` runs a task only while the user who
    deferred it exists (:mod:`core.tasks.context`); ``debounce`` runs one call of many, the last
    (:mod:`core.tasks.debounce`); ``rate_limit`` bounds its starts across instances (:mod:`core.tasks.rate_limit`);
    ``expires`` drops a task not started in time (:mod:`core.tasks.expiry`); ``unique``, ``unique_for``
    and ``unique_key`` keep at most one pending or running task per key (:mod:`core.tasks.unique`).
    """
    options = {"priority": priority, "tags": tags, "description": description, "hooks": hooks, "lock": lock,
               "lock_lease": lock_lease, "track": track, "max_attempts": max_attempts, "retry_on": retry_on,
               "backoff": backoff, "timeout": timeout, "require_user": require_user,
               "debounce": debounce, "debounce_key": debounce_key, "rate_limit": rate_limit, "rate_key": rate_key,
               "expires": expires, "unique": unique, "unique_for": unique_for, "unique_key": unique_key}
    if func is None:
        return lambda f: DeferredFunction(f, queue=queue, **options)
    return DeferredFunction(func, queue=queue, **options)


def _configure(target: DeferredTarget, *, priority: str | None = None, tags: Iterable[str] = (),
               description: str | None = None, hooks: Iterable[Any] | None = None, lock: str | bool | None = None,
               lock_lease: float | datetime.timedelta | None = None, debounce: Any = None,
               debounce_key: str | None = None, rate_limit: str | None = None, rate_key: str | None = None) -> None:
    what = f"@callDeferred on {target.name}"
    if priority is not None and target.queue is not None:
        raise ConfigurationError(f"{what}: give queue= or priority=, not both")
    target.priority = check_priority(priority, what)
    target.tags, target.description = check_tags(tags, description, what)
    target.hooks = check_hooks(hooks, what)
    target.lock = lock_spec(lock, target.func, target.name, lock_lease=lock_lease)
    if target.lock is not None:
        target.func = locked(target.func, target.lock, target.name)
    target.debounce = debounce_spec(debounce, debounce_key, target.func, what)
    target.rate_limit = rate_limit_spec(rate_limit, rate_key, target.func, what)


def _check_timeout(name: str, timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout <= MAX_TIMEOUT.total_seconds():
        raise ValueError(f"@callDeferred on {name}: timeout must be a number of seconds > 0 and at most "
                         f"{MAX_TIMEOUT.total_seconds():g} (24 h), got {timeout!r}")
    return float(timeout)


CallDeferred = callDeferred
call_deferred = callDeferred


def _max_executions(func: Any, count: int, mail: GiveUpMail | None = None) -> Any:
    target = getattr(func, "target", None)
    if isinstance(target, DeferredTarget):
        target.max_executions, target.give_up_mail = count, mail
    else:
        raw = getattr(func, "__func__", func)
        raw._max_executions, raw._give_up_mail = count, mail
    return func


def retry_n_times(retries: int, email_recipients: str | list[str] | None = None,
                  tpl: str | None = None) -> Callable[[Any], Any]:
    """Run a deferred function at most ``retries + 1`` times; after that the task is given up.

    ViUR's arguments: ``email_recipients`` are mailed once when it gives up, through the app's
    ``admin_mail`` hook, with the text of the template ``tpl`` if given (:mod:`core.tasks.give_up`).
    """
    if retries < 0:
        raise ValueError("retry_n_times needs a count >= 0")
    mail = GiveUpMail.build(email_recipients, tpl)
    return lambda func: _max_executions(func, retries + 1, mail)


def noRetry(func: Any) -> Any:  # noqa: N802 - ViUR's name
    """Never run a deferred function a second time (a failed first run is recorded, not retried)."""
    return _max_executions(func, 1)


no_retry = noRetry


def _schedule(countdown: Any, eta: Any, now: datetime.datetime) -> datetime.datetime | None:
    if countdown is not None and eta is not None:
        raise ValueError("pass either _countdown or _eta, not both")
    if countdown is not None:
        if not isinstance(countdown, (int, float)) or isinstance(countdown, bool) or countdown < 0:
            raise ValueError(f"_countdown must be a number of seconds >= 0, got {countdown!r}")
        eta = now + datetime.timedelta(seconds=countdown)
    elif eta is not None:
        if not isinstance(eta, datetime.datetime):
            raise ValueError(f"_eta must be a datetime, got {eta!r}")
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=datetime.UTC)
    if eta is not None and eta - now > MAX_SCHEDULE_AHEAD:
        raise ValueError(f"cannot schedule a task more than 30 days ahead (eta {eta.isoformat()})")
    return eta


def _timing(runtime: TaskRuntime, target: DeferredTarget, bound: tuple[Any, ...], args: tuple[Any, ...],
            kwargs: dict[str, Any], countdown: Any, eta: Any, debounce: Any,
            expires: Any) -> tuple[datetime.datetime | None, DebouncedCall | None, float | None]:
    """When a call runs and until when it may start: its ETA, its debounce, its expiry moment."""
    now = runtime.clock.now()
    eta = _schedule(countdown, eta, now)
    latest = debounced_call(target.debounce, debounce, target.func, target.name, (*bound, *args), kwargs)
    if latest is not None:
        if eta is not None:
            raise ValueError(f"{target.name}: a debounced call runs its window after the call; "
                             f"give no _countdown or _eta")
        eta = now + latest.window
    moment = expiry_moment(check_expires(expires, f"{target.name}(_expires=...)") if expires is not None
                           else target.expires, now)
    if moment is not None and eta is not None and eta.timestamp() >= moment:
        raise ValueError(f"{target.name}: the task is scheduled at {eta.isoformat()}, not before it expires")
    return eta, latest, moment


def defer(runtime: TaskRuntime, target: DeferredTarget, args: tuple[Any, ...], kwargs: dict[str, Any], *,
          instance: Any = None, _queue: str | None = None, _countdown: float | None = None,
          _eta: datetime.datetime | None = None, _name: str | None = None,
          _target_version: str | None = None, _call_deferred: bool = True,
          _track: bool | None = None, _require_user: bool | None = None, _debounce: Any = None,
          _expires: Any = None, _unique: bool | str | None = None, _extra: Mapping[str, Any] | None = None,
          check_call: bool = False) -> TaskHandle:
    """Queue one call of ``target``; validates everything before anything is sent.

    ``_extra`` adds fields to the task's payload (a workflow marks its tasks with it).
    ``check_call`` checks the arguments against the function (a caller's own call; a workflow's
    next step, fed the previous result, is checked when it runs, where a misfit fails the workflow).
    """
    instance_path = None
    if target.kind == "method":
        locator = runtime.modules
        instance_path = locator.path_of(instance) if locator is not None else None
        if instance_path is None:
            raise DeferredArgumentError(
                f"{target.name} is a deferred method and runs on the live module instance, but "
                f"{instance!r} is not mounted in the app's module tree")
    queue = queue_of(runtime, target.name, option=_queue, declared=target.queue, priority=target.priority)
    bound = (instance,) if target.kind == "method" else (target.owner,) if target.kind == "classmethod" else ()
    eta, latest, expires = None, None, None
    if (_countdown is not None or _eta is not None or _debounce is not None or _expires is not None
            or target.debounce is not None or target.expires is not None):  # else the clock has nothing to say
        eta, latest, expires = _timing(runtime, target, bound, args, kwargs, _countdown, _eta, _debounce, _expires)
    tracked = _track if _track is not None else (target.track or queue in runtime.settings.tasks_tracked_queues)
    call: dict[str, Any] = {"target": target.name, "instance": instance_path, "args": list(args), "kwargs": kwargs}
    spec = _unique_spec(target, _unique)
    unique = None
    if spec is not None:
        if _track is False:
            raise ValueError(f"{target.name}: a unique task is always tracked; _track=False cannot be given")
        tracked = True
        scope = target.name if instance_path is None else f"{target.name}@{instance_path}"
        try:
            unique = uniqueness.UniqueCall.of(spec, scope, target.func, bound, args, kwargs, _unique)
        except TypeError as exc:  # an argument that cannot travel is named as the send path would name it
            raise argument_error(target, args, kwargs, {}, exc) from None
        call[uniqueness.FIELD] = unique.name
    if target.tags:
        call["tags"] = list(target.tags)
    if target.description is not None:
        call["description"] = target.description
    if tracked:
        call["track"] = True
    if target.timeout is not None:
        call["timeout"] = target.timeout
    if latest is not None:
        call["debounce"] = latest.marker()
    if target.rate_limit is not None:
        call["rate"] = rate_marker(target.rate_limit, target.func, target.name, (*bound, *args), kwargs)
    if expires is not None:
        call[EXPIRES_FIELD] = expires
    if _extra:
        call.update(_extra)
    envelope = message.Envelope(kind="deferred", payload=call, queue=queue, env=capture_environment(runtime))
    if _require_user if _require_user is not None else target.require_user:
        require_caller(envelope.env, target.name)
    deadline = datetime.timedelta(seconds=target.timeout) if target.timeout is not None else None
    check = None
    if check_call:  # after encoding (in send), so a value that cannot travel at all is named as such first
        check = functools.partial(arguments.check_deferred_call, target.func, bound, args, kwargs)
    sending = functools.partial(send, runtime, envelope, path=DEFERRED_PATH, target=target.name, name=_name, eta=eta,
                                target_version=_target_version or None, deadline=deadline, record=tracked, check=check)
    try:
        if unique is not None:
            return uniqueness.send_once(runtime, unique, target=target.name, send=sending)
        return sending() if latest is None else send_latest(latest, sending)
    except DeferredArgumentError:
        raise
    except TypeError as exc:
        raise argument_error(target, args, kwargs, envelope.env, exc) from None


def _unique_spec(target: DeferredTarget, option: bool | str | None) -> uniqueness.UniqueSpec | None:
    """The uniqueness of one call: the target's, unless ``_unique`` turns it off or on."""
    if option is None:
        return target.unique
    if option is False:
        return None
    if option is True or (isinstance(option, str) and option):
        return target.unique or uniqueness.UniqueSpec()
    raise ValueError(f"{target.name}: _unique must be True, False or a non-empty key string, got {option!r}")


def send_task(runtime: TaskRuntime, kind: str, payload: dict[str, Any], *, target: str, queue: str | None = None,
              name: str | None = None, tracked: bool | None = None, target_version: str | None = None) -> TaskHandle:
    """Queue a task of another kind than ``deferred`` (a periodic or startup run) to ``/_tasks/deferred``.

    ``payload`` must hold only values ``core.json`` carries; ``target`` is what its record names;
    ``tracked=None`` gives it a record if its queue is a tracked one.
    """
    queue = queue_of(runtime, target, declared=queue)
    if tracked is None:
        tracked = queue in runtime.settings.tasks_tracked_queues
    if tracked:
        payload = {**payload, "track": True}
    envelope = message.Envelope(kind=kind, payload=payload, queue=queue, env=capture_environment(runtime))
    return send(runtime, envelope, path=DEFERRED_PATH, target=target, name=name, target_version=target_version,
                record=tracked)


def argument_error(target: DeferredTarget, args: tuple[Any, ...], kwargs: dict[str, Any], env: dict[str, Any],
                   error: TypeError) -> DeferredArgumentError:
    """The error for a call whose envelope could not be encoded, naming the argument at fault.

    Runs only after encoding failed: each argument is checked on its own to find the culprit, so
    the message speaks of the call (``f(args[0])['k']``), not of the envelope around it.
    """
    call = getattr(target.func, "__qualname__", target.name)
    labelled = [(f"args[{i}]", value) for i, value in enumerate(args)]
    labelled += [(f"{name}=...", value) for name, value in kwargs.items()]
    for label, value in labelled:
        try:
            tagged_json.check_serializable(value)
        except tagged_json.SerializationError as exc:
            return DeferredArgumentError(f"{call}({label}){exc.location}: {exc.reason}", function=call,
                                         argument=label)
    try:
        tagged_json.check_serializable(env.get("custom"))
    except tagged_json.SerializationError as exc:
        return DeferredArgumentError(f"cannot defer {call}: the app's environment serialize() gave a value that "
                                     f"cannot travel: {exc.reason} at serialize(){exc.location}", function=call)
    return DeferredArgumentError(f"cannot defer {call}: {error}", function=call)


def run_deferred(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo) -> Any:
    """Run a ``deferred`` envelope: find the target by name, the instance by path, call it."""
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
            if target.give_up_mail is not None:
                target.give_up_mail.send(runtime.admin_mail, target.func, target.max_executions - 1, args, kwargs, exc)
            raise PermanentTaskFailure(
                f"{target.name} failed on its last allowed execution ({target.max_executions}): {exc!r}") from exc
        raise


DEFERRED_KIND = declare_kind("deferred", run_deferred, DEFERRED_PATH)
