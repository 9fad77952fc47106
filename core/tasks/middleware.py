"""The middleware of an app's task pipeline: one ordered list, built into one chain, per app.

In dramatiq's manner: a middleware is ``step(delivery, proceed) -> Outcome`` (a function, or an
object with a ``step`` method); it may act before the rest, answer without calling ``proceed``, or
look at the outcome after it. The library's own middleware (verify, dead letters, decode, hooks,
retry warning, payload cleanup, lifecycle, environment, telemetry, run) are *built-ins*, declared
once by the executor in their order; each app's :class:`Pipeline` (its runtime's) takes them
from its registry and places the app's own around them by name: ``add(m, before="lifecycle")``.
The runtime's ``add_middleware`` adapts a :class:`~core.tasks.hooks.TaskHook` into one.

A middleware of the app that raises is logged and passed over, as dramatiq logs a failing
middleware and goes on: the task still runs (or keeps the outcome it already has). An app-wide
middleware runs for every task, so treating its bug as each task's failure would retry, then
dead-letter, every task of the app for one faulty line; and no queue ever gets a 5xx from it.
The chain is built once, when the pipeline first runs after a change, not per request. A built-in
that matters only for some tasks (a debounce, a unique claim, a timeout...) is declared
:class:`Gated` by a flag, and the built-in after which a task's needs are known is the
:class:`Shaping` one: past it, each *shape* of task (the set of flags it needs) runs a chain of its
own, built once per shape, without the middleware it does not need. What a push does not need is
not done for it, not even the call that would find nothing to do.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from core.tasks.outcome import Outcome
from core.tasks.registry import Table

log = logging.getLogger(__name__)

D = TypeVar("D")
Proceed = Callable[[D], Outcome]


class Step(Protocol[D]):
    """A middleware function: ``step(delivery, proceed=...)``; the pipeline links steps by ``proceed``."""

    def __call__(self, delivery: D, /, proceed: Proceed[D]) -> Outcome: ...

#: Where a middleware added without ``before=`` or ``after=`` goes: innermost, just before this one.
INNERMOST = "run"


@dataclasses.dataclass(frozen=True)
class Gated(Generic[D]):
    """A built-in middleware that only a delivery whose shape holds ``flag`` passes through."""

    step: Step[D]
    flag: str

    def __call__(self, delivery: D, proceed: Proceed[D]) -> Outcome:
        return self.step(delivery, proceed)


@dataclasses.dataclass(frozen=True)
class Shaping(Generic[D]):
    """The built-in middleware after which ``shape(delivery)`` says which :class:`Gated` flags a delivery needs."""

    step: Step[D]
    shape: Callable[[D], frozenset[str]]

    def __call__(self, delivery: D, proceed: Proceed[D]) -> Outcome:
        return self.step(delivery, proceed)


class Middleware(Protocol):
    """A middleware object: its ``step`` runs around the rest of the pipeline."""

    def step(self, delivery: Any, proceed: Callable[[Any], Outcome]) -> Outcome: ...


class Pipeline(Generic[D]):
    """The middleware of one app, in order (its runtime owns it): the built-ins and the app's own."""

    def __init__(self, builtins: Table[Step[D]]) -> None:
        #: The registry's table of built-ins (declared by the executor, in order).
        self._builtins = builtins
        self._added: list[tuple[str, Step[D], str | None, str | None]] = []
        self._chain: Proceed[D] | None = None
        self._lock = threading.Lock()

    def add(self, middleware: Step[D] | Middleware, *, before: str | None = None, after: str | None = None,
            name: str | None = None) -> Step[D] | Middleware:
        """Add ``middleware`` before or after the one named so (innermost, just before the run, by default).

        ``name`` (default: the object's ``name``, its class's or function's name) lets later
        middleware be placed relative to this one. Returns ``middleware`` (usable as a decorator).
        """
        if before is not None and after is not None:
            raise ValueError("add_middleware: give before= or after=, not both")
        step = _step_of(middleware)
        name = name or _name_of(middleware)
        with self._lock:
            names = [entry_name for entry_name, _ in self._ordered(self._added)]
            if name in names:
                raise ValueError(f"add_middleware: a middleware named {name!r} is already in the pipeline "
                                 "(give another name=)")
            for anchor in (before, after):
                if anchor is not None and anchor not in names:
                    raise ValueError(f"add_middleware: no middleware named {anchor!r} in the pipeline; "
                                     f"it has {', '.join(names)}")
            self._added.append((name, _guarded(name, step), before, after))
            self._chain = None
        return middleware

    def inherit(self, other: Pipeline[D]) -> None:
        """Take the app's own middleware of ``other`` (a test app's runtime swapped for another)."""
        with self._lock:
            self._added.extend(other._added)
            self._chain = None

    def names(self) -> list[str]:
        """The middleware's names, outermost first."""
        return [name for name, _ in self._ordered(self._added)]

    def __call__(self, delivery: D) -> Outcome:
        """Run ``delivery`` through the chain (built on first use after a change)."""
        chain = self._chain
        if chain is None:
            with self._lock:
                chain = self._chain = _shaped([step for _, step in self._ordered(self._added)])
        return chain(delivery)

    def _ordered(self, added: list[tuple[str, Step[D], str | None, str | None]]) -> list[tuple[str, Step[D]]]:
        entries: list[tuple[str, Step[D]]] = self._builtins.items()
        innermost = next((i for i, (name, _) in enumerate(entries) if name == INNERMOST), len(entries))
        for name, step, before, after in added:
            names = [entry_name for entry_name, _ in entries]
            if before is not None:
                index = names.index(before)
            elif after is not None:
                index = names.index(after) + 1
            else:
                index = innermost
            if index <= innermost:
                innermost += 1
            entries.insert(index, (name, step))
        return entries


def _shaped(steps: list[Step[D]]) -> Proceed[D]:
    """The steps as one callable; past a :class:`Shaping` step, one chain per shape leaving out the gates it lacks."""
    split = next((i for i, step in enumerate(steps) if isinstance(step, Shaping)), None)
    if split is None:
        return _chained([_ungated(step) for step in steps])
    shaping = steps[split]
    assert isinstance(shaping, Shaping)
    inner, shape = steps[split + 1:], shaping.shape
    chains: dict[frozenset[str], Proceed[D]] = {}

    def by_shape(delivery: D) -> Outcome:
        flags = shape(delivery)
        chain = chains.get(flags)
        if chain is None:  # at most one per combination of the gates' flags
            chain = chains.setdefault(flags, _chained(
                [_ungated(step) for step in inner if not isinstance(step, Gated) or step.flag in flags]))
        return chain(delivery)

    return _chained([_ungated(step) for step in steps[:split]] + [shaping.step], end=by_shape)


def _ungated(step: Step[D]) -> Step[D]:
    """The function of a built-in declared :class:`Gated` or :class:`Shaping`: the chain calls it directly."""
    return step.step if isinstance(step, (Gated, Shaping)) else step


def _chained(steps: list[Step[D]], end: Proceed[D] | None = None) -> Proceed[D]:
    """The steps as one callable, the first one outermost."""
    def no_run(delivery: D) -> Outcome:
        raise RuntimeError("the task pipeline has no run middleware")

    proceed: Proceed[D] = end or no_run
    for step in reversed(steps):
        proceed = functools.partial(step, proceed=proceed)  # a C-level link: no Python frame of its own
    return proceed


def _step_of(middleware: Any) -> Step[Any]:
    step = getattr(middleware, "step", None)
    if callable(step):
        return step  # type: ignore[no-any-return]
    if callable(middleware):
        return middleware  # type: ignore[no-any-return]
    raise TypeError(f"add_middleware: {middleware!r} is neither step(delivery, proceed) nor an object with a "
                    f"step method")


def _name_of(middleware: Any) -> str:
    name = getattr(middleware, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(middleware, "__name__", None) or type(middleware).__name__


def _guarded(name: str, step: Step[D]) -> Step[D]:
    """``step`` of an app's middleware: what it raises itself is logged and passed over (see the module)."""
    def guarded(delivery: D, proceed: Proceed[D]) -> Outcome:
        done: list[Outcome] = []
        raised: list[BaseException] = []

        def rest(current: D) -> Outcome:
            try:
                outcome = proceed(current)
            except BaseException as exc:
                raised.append(exc)
                raise
            done.append(outcome)
            return outcome

        try:
            return step(delivery, rest)
        except Exception as exc:
            if raised and exc is raised[-1]:
                raise  # the rest of the pipeline's, not the middleware's: it goes on outwards
            log.exception("task middleware %s failed; the task goes on without it", name)
            if done:
                return done[-1]
            if raised:
                raise raised[-1] from None
            return proceed(delivery)
    return guarded
