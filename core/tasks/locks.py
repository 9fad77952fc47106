"""Locks of tasks: ``@callDeferred(lock="invoice-{invoice_key}")`` and ``@PeriodicTask(..., lock=True)``.

A locked task holds a Datastore lease (:mod:`core.tasks.lease`) named after its lock while it
runs: renewed while it runs, released when it ends or fails, expired after its lease when its
process dies. A run that finds the lock held does not run: it answers :class:`LockHeld` (409) and
the queue tries it again later, so runs over one lock never overlap and none is dropped.

A template names the lock from the call's arguments (``str.format`` fields naming parameters, as
bound to the function's signature, defaults applied); a template without fields, or
``lock=True``, makes a singleton: one run of the task at a time. A field that names no parameter
fails at decoration; a call whose arguments cannot fill the template fails at the call site.
Lock names are shared by every task: two tasks whose templates give the same name exclude each
other (``lock=True`` uses the task's registered name).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect
import re
import string
from collections.abc import Callable, Iterator
from typing import Any

from core import db
from core.tasks import lease
from core.tasks.errors import ConfigurationError, DeferredArgumentError
from core.tasks.runtime import TaskRuntime, get_runtime

_FIELD_ROOT = re.compile(r"^[^.\[]*")


@dataclasses.dataclass(frozen=True)
class LockSpec:
    """A task's lock: the template of its name and, if given, its own lease duration."""

    template: str
    lease: datetime.timedelta | None = None


def lease_duration(value: float | datetime.timedelta | None, what: str) -> datetime.timedelta | None:
    """``lock_lease=`` as a timedelta (seconds or a timedelta); refuses what is not positive."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.timedelta(seconds=value)
    if not isinstance(value, datetime.timedelta) or value <= datetime.timedelta(0):
        raise ConfigurationError(f"{what}: lock_lease must be a positive number of seconds or timedelta, "
                                 f"got {value!r}")
    return value


def lock_spec(lock: str | bool | None, func: Callable[..., Any], name: str, *,
              lock_lease: float | datetime.timedelta | None = None) -> LockSpec | None:
    """Check a task's ``lock=`` at decoration: ``None``/``False`` (no lock), ``True`` or a template."""
    if lock is None or lock is False:
        if lock_lease is not None:
            raise ConfigurationError(f"{name}: lock_lease= needs lock=")
        return None
    if lock is True:
        template = name
    elif isinstance(lock, str) and lock:
        template = lock
    else:
        raise ConfigurationError(f"{name}: lock must be True or a non-empty name template, got {lock!r}")
    check_template(template, func, name, option="lock")
    return LockSpec(template, lease_duration(lock_lease, name))


def lock_name(spec: LockSpec, func: Callable[..., Any], name: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> str:
    """The lock of one call: the template filled from the call's bound arguments.

    Raises :class:`DeferredArgumentError` naming the task when the arguments cannot fill it.
    """
    return fill_template(spec.template, func, name, args, kwargs, option="lock")


def check_template(template: str, func: Callable[..., Any], name: str, *, option: str) -> None:
    """Check a name template of option ``option`` (``lock``, ``rate_key``, ...) against ``func``'s parameters.

    The one template rule of every option that names something after a call's arguments.
    """
    parameters = inspect.signature(func).parameters
    try:
        fields = [parsed[1] for parsed in string.Formatter().parse(template) if parsed[1] is not None]
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {option} template {template!r} is malformed: {exc}") from None
    for field in fields:
        root = _FIELD_ROOT.match(field).group(0)  # type: ignore[union-attr]
        if not root or root.isdigit():
            raise ConfigurationError(f"{name}: {option} template {template!r} must name arguments, "
                                     f"as in 'invoice-{{invoice_key}}'")
        if root not in parameters:
            raise ConfigurationError(f"{name}: {option} template {template!r} names {root!r}, which is not a "
                                     f"parameter of the function (it takes {list(parameters)})")


def fill_template(template: str, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any], *, option: str) -> str:
    """``template`` filled from one call's arguments as bound to ``func`` (defaults applied).

    Raises :class:`DeferredArgumentError` naming the task and the option when they cannot fill it.
    """
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except TypeError as exc:
        raise DeferredArgumentError(f"cannot defer {name}: {exc}") from None
    bound.apply_defaults()
    try:
        filled = template.format_map(bound.arguments)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise DeferredArgumentError(f"cannot defer {name}: its {option} template {template!r} cannot be "
                                    f"filled from the call's arguments ({type(exc).__name__}: {exc})") from None
    if not filled:
        raise DeferredArgumentError(f"cannot defer {name}: its {option} template {template!r} gives an empty name")
    return filled


def _duration(spec: LockSpec) -> datetime.timedelta:
    if spec.lease is not None:
        return spec.lease
    return datetime.timedelta(seconds=get_runtime().settings.tasks_lock_lease_seconds)


def locked(func: Callable[..., Any], spec: LockSpec, name: str) -> Callable[..., Any]:
    """``func`` wrapped to run only while holding its lock (an ``async def`` stays awaitable)."""
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with lease.holding(lock_name(spec, func, name, args, kwargs), _duration(spec), what=name):
                return await func(*args, **kwargs)

        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with lease.holding(lock_name(spec, func, name, args, kwargs), _duration(spec), what=name):
            return func(*args, **kwargs)

    return run


@contextlib.contextmanager
def periodic_run(runtime: TaskRuntime, state_id: str, state_key: db.Key, generation: int, *, lock: bool,
                 stale_after: datetime.timedelta) -> Iterator[None]:
    """Around one periodic run: keep its claim alive; with ``lock`` hold the task's lock too.

    The claim (``pending_generation`` on the task's state entity) gets an ``alive_at`` stamp a few
    times per ``stale_after``, so a run longer than that is never taken as lost and claimed again.
    """
    what = f"periodic task {state_id}"
    beat = lease.stamper(state_key, "alive_at", lambda state: state.get("pending_generation") == generation)
    with contextlib.ExitStack() as stack:
        if lock:
            duration = datetime.timedelta(seconds=runtime.settings.tasks_lock_lease_seconds)
            stack.enter_context(lease.holding(f"periodic:{state_id}", duration, what=what))
        stack.enter_context(lease.Heartbeat(beat, stale_after.total_seconds() / 4, what=what))
        yield
