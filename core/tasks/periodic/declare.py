"""``@PeriodicTask``: declaring a periodic task (what to call, when, in which cron group).

A declaration is a record of the code, made at import; each app's registry takes it from there
(:mod:`core.tasks.registry`). The cron ping and the run are in :mod:`core.tasks.periodic.kind`.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, overload

from core.tasks import aio
from core.tasks.errors import ConfigurationError
from core.tasks.periodic.schedule import Crontab, Schedule, build_schedule
from core.tasks.registry import TaskRegistry, declarations, qualified_name
from core.tasks.transports.base import QUEUE_NAME_RE

DEFAULT_CRON = "default"
CRON_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

@dataclasses.dataclass
class PeriodicSpec:
    """One declared periodic task: what to call, when, in which cron group."""

    name: str
    func: Callable[..., Any]
    schedule: Schedule
    cron_name: str
    is_method: bool
    attr: str
    owner: type | None = None
    queue: str | None = None
    #: Hold a lock while running (a singleton across instances and overlapping claims).
    lock: bool = False


class PeriodicFunction:
    """What ``@PeriodicTask`` returns: the function, still callable, carrying its :class:`PeriodicSpec`.

    A descriptor, so that a decorated method binds like a method and learns its class.
    """

    def __init__(self, func: Callable[..., Any], spec: PeriodicSpec) -> None:
        self.periodic = spec
        functools.update_wrapper(self, func)

    def __set_name__(self, owner: type, name: str) -> None:
        self.periodic.owner, self.periodic.attr = owner, name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return self.periodic.func.__get__(instance, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.periodic.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<periodic {self.periodic.name} ({self.periodic.cron_name})>"


def check_no_arguments(func: Callable[..., Any], is_method: bool, what: str) -> None:
    """Refuse a task function that needs arguments: nobody could pass them."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    required = [p for p in signature.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(required) > (1 if is_method else 0):
        raise TypeError(f"{what} {qualified_name(func)} must take no arguments"
                        f"{' besides self' if is_method else ''}; it takes {[p.name for p in required]}")


def declare_periodic(func: Callable[..., Any], interval: float | datetime.timedelta | None, cron_name: str,
                     at: datetime.time | None, crontab: Crontab | None, queue: str | None,
                     lock: bool = False, *, builtin: bool = False, name: str | None = None) -> PeriodicFunction:
    """Check and declare one periodic task (``builtin``: one of the library's, in every app).

    ``name`` (the library's built-ins only) replaces ``module.qualname``, the id its state is stored under.
    """
    if isinstance(func, (staticmethod, classmethod)) or not callable(func):
        raise TypeError(f"@PeriodicTask needs a function or a module method, got {func!r}")
    if func.__name__.startswith("_"):
        raise ConfigurationError(f"periodic task {func.__qualname__} starts with an underscore: periodic tasks "
                                 "must be public functions or methods (rename it)")
    if not isinstance(cron_name, str) or not CRON_NAME_RE.match(cron_name):
        raise ConfigurationError(f"cron group name {cron_name!r} must be 1-100 letters, digits, '_' or '-'")
    if queue is not None and not QUEUE_NAME_RE.match(str(queue)):
        raise ConfigurationError(f"invalid queue name {queue!r}: use letters, digits and hyphens")
    schedule = build_schedule(interval, at, crontab)
    is_method = "." in func.__qualname__
    check_no_arguments(func, is_method, "periodic task")
    aio.check_runnable(func, "periodic task")
    if not isinstance(lock, bool):
        raise ConfigurationError(f"periodic task {func.__qualname__}: lock must be True or False, got {lock!r}")
    spec = PeriodicSpec(name or qualified_name(func), func, schedule, cron_name, is_method, func.__name__, queue=queue,
                        lock=lock)
    wrapper = PeriodicFunction(func, spec)
    declarations.add("periodic", spec.name, spec, builtin=builtin)
    return wrapper


#: What ``@PeriodicTask(...)`` with arguments returns: the decorator.
PeriodicDecorator = Callable[[Callable[..., Any]], PeriodicFunction]


@overload
def PeriodicTask(interval: Callable[..., Any], cronName: str = ..., *,  # noqa: N802,N803 - ViUR's names
                 at: datetime.time | None = ..., crontab: Crontab | None = ...,
                 queue: str | None = ..., lock: bool = ...) -> PeriodicFunction: ...
@overload
def PeriodicTask(interval: float | datetime.timedelta | None = ..., cronName: str = ..., *,  # noqa: N802,N803
                 at: datetime.time | None = ..., crontab: Crontab | None = ...,
                 queue: str | None = ..., lock: bool = ...) -> PeriodicDecorator: ...
def PeriodicTask(interval: Callable[..., Any] | float | datetime.timedelta | None = None,  # noqa: N802
                 cronName: str = DEFAULT_CRON, *, at: datetime.time | None = None,  # noqa: N803 - ViUR's name
                 crontab: Crontab | None = None, queue: str | None = None,
                 lock: bool = False) -> PeriodicFunction | PeriodicDecorator:
    """Decorator: run a function, or a method on every mounted instance of its module, periodically.

    ``interval`` is a lower bound between runs: a :class:`datetime.timedelta` or a number of
    minutes (ViUR's unit); ``None``/``0`` means on every ping of the cron group. Instead of an
    interval give ``at=datetime.time(3, 0)`` (daily, in ``settings.tasks_timezone`` unless the time
    has its own ``tzinfo``) or ``crontab=Crontab(...)``. ``cronName`` is the group pinged at
    ``/_tasks/cron/<cronName>``; ``queue`` the queue the runs go to (default queue otherwise).
    ``lock=True`` holds a lock per task and instance while it runs: a run that finds it held is
    retried later by the queue, never run alongside.
    A bad specification raises :class:`InvalidScheduleSpecification` here, at decoration.
    """
    if callable(interval) and not isinstance(interval, datetime.timedelta):
        return declare_periodic(interval, None, cronName, at, crontab, queue, lock)  # bare @PeriodicTask
    return lambda func: declare_periodic(func, interval, cronName, at, crontab, queue, lock)


@overload
def periodic_task(interval: Callable[..., Any], cron_name: str = ..., *, at: datetime.time | None = ...,
                  crontab: Crontab | None = ..., queue: str | None = ..., lock: bool = ...) -> PeriodicFunction: ...
@overload
def periodic_task(interval: float | datetime.timedelta | None = ..., cron_name: str = ..., *,
                  at: datetime.time | None = ..., crontab: Crontab | None = ..., queue: str | None = ...,
                  lock: bool = ...) -> PeriodicDecorator: ...
def periodic_task(interval: Callable[..., Any] | float | datetime.timedelta | None = None,
                  cron_name: str = DEFAULT_CRON, *, at: datetime.time | None = None, crontab: Crontab | None = None,
                  queue: str | None = None, lock: bool = False) -> PeriodicFunction | PeriodicDecorator:
    """snake_case spelling of :func:`PeriodicTask`."""
    return PeriodicTask(interval, cron_name, at=at, crontab=crontab, queue=queue, lock=lock)


def spec_of(task: Any, registry: TaskRegistry | None = None) -> PeriodicSpec | None:
    """The registered spec of a decorated function, method, bound method or registered name."""
    def find(name: str) -> Any:
        return registry.periodic.find(name) if registry is not None else declarations.find("periodic", name)

    if isinstance(task, PeriodicFunction):
        found = find(task.periodic.name)
        return found if found is task.periodic else None
    if isinstance(task, str):
        return find(task)  # type: ignore[no-any-return]
    func = getattr(task, "__func__", task)
    try:
        name = qualified_name(func)
    except TypeError:
        return None
    found = find(name)
    return found if found is not None and found.func is func else None


def removePeriodicTask(task: Any) -> None:  # noqa: N802 - ViUR's name
    """Unregister a periodic task (e.g. one inherited from a module you override); unknown is a no-op."""
    spec = spec_of(task)
    if spec is not None:
        declarations.remove("periodic", spec.name)


remove_periodic_task = removePeriodicTask

