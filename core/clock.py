"""The app's clock: the one source of "now" for every wait, deadline and stamp of the task module.

Each app's runtime owns a :class:`Clock` (``runtime.clock``, the wall clock unless replaced, e.g.
by the test plugin's ``TestClock``). Code that has the runtime reads ``runtime.clock.now()``;
rooms below it (records, leases, the envelope) call :func:`utc_now`, which reads the clock of the
app whose runtime is bound in this context (binding a runtime makes its clock current here), and
the wall clock outside any app. The owner is what is bound, not its clock, so replacing an app's
clock is seen at once by every context the app is bound in.

Real waiting (sleeps, polling, HTTP timeouts, the local dispatcher's loop) is not what this clock
is for: it stays on ``time.monotonic()``. Times an outside party judges (an OIDC token's window,
a signature's freshness against replay) stay on the real clock too (see those modules), as do the
queues themselves (Cloud Tasks, the local queue's own process): in production the app's clock is
the wall clock, so they agree; only the in-process test queue shares a moved clock with the app.
"""
from __future__ import annotations

import contextvars
import datetime
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time: timezone-aware UTC, never naive."""

    def now(self) -> datetime.datetime: ...


class ClockOwner(Protocol):
    """What binds a clock to a context (the app's runtime): the clock it holds now."""

    clock: Clock


class WallClock:
    """The real time: production's clock, and the fallback outside any app."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)


WALL_CLOCK = WallClock()

_owner: contextvars.ContextVar[ClockOwner | None] = contextvars.ContextVar("core_clock_owner", default=None)


def current_clock() -> Clock:
    """The clock of the app bound in this context; the wall clock outside any app."""
    owner = _owner.get()
    return WALL_CLOCK if owner is None else owner.clock


def utc_now() -> datetime.datetime:
    """Now, on :func:`current_clock`."""
    owner = _owner.get()
    return (WALL_CLOCK if owner is None else owner.clock).now()


def bind(owner: ClockOwner) -> contextvars.Token[ClockOwner | None]:
    """Make ``owner``'s clock current in this context (the runtime's binding does it); undo with :func:`unbind`."""
    return _owner.set(owner)


def unbind(token: contextvars.Token[ClockOwner | None]) -> None:
    _owner.reset(token)
