"""A deferred function's own retry policy: how often, on which errors, and how long to wait.

``@callDeferred(max_attempts=5, retry_on=(IOError,), backoff=Exponential(base=2, max=600))``
runs a task at most five times, retries only ``IOError`` (any other error ends it at once as a
dead letter) and waits 1, 2, 4, 8 s between the attempts. With a ``backoff`` the handler itself
schedules the next attempt (it answers 2xx and queues the same task id again with a countdown),
so the waits hold on every transport whatever the queue's own retry parameters are; without one,
the queue retries on its schedule and ``max_attempts`` only bounds how often.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


class Backoff(Protocol):
    """Seconds to wait after the ``attempt``-th failed attempt (1-based) before the next one."""

    def delay(self, attempt: int) -> float: ...


def _number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if positive and value == 0:
        raise ValueError(f"{name} must be above 0, got {value!r}")
    return float(value)


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")


@dataclasses.dataclass(frozen=True)
class Constant:
    """The same wait after every failure."""

    seconds: float = 1.0

    def __post_init__(self) -> None:
        _number("Constant(seconds=)", self.seconds)

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        return float(self.seconds)


@dataclasses.dataclass(frozen=True)
class Linear:
    """``start``, ``start + step``, ``start + 2 step`` ... seconds, at most ``max``."""

    start: float = 1.0
    step: float = 1.0
    max: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("start", "step", "max"):
            _number(f"Linear({name}=)", getattr(self, name))

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        return float(min(self.max, self.start + self.step * (attempt - 1)))


@dataclasses.dataclass(frozen=True)
class Exponential:
    """``first``, ``first * base``, ``first * base²`` ... seconds, at most ``max``."""

    base: float = 2.0
    max: float = 3600.0
    first: float = 1.0

    def __post_init__(self) -> None:
        _number("Exponential(max=)", self.max)
        _number("Exponential(first=)", self.first)
        if _number("Exponential(base=)", self.base, positive=True) < 1:
            raise ValueError(f"Exponential(base=) must be at least 1, got {self.base!r}")

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        try:
            value = self.first * self.base ** (attempt - 1)
        except OverflowError:
            return float(self.max)
        return float(min(self.max, value))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """What ``max_attempts``, ``retry_on`` and ``backoff`` of ``@callDeferred`` say."""

    max_attempts: int | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    backoff: Backoff | None = None

    @classmethod
    def build(cls, owner: str, *, max_attempts: object = None, retry_on: object = None,
              backoff: object = None) -> RetryPolicy | None:
        """Check the decorator's arguments (naming ``owner``); ``None`` when none is given."""
        if max_attempts is None and retry_on is None and backoff is None:
            return None
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                         or max_attempts < 1):
            raise ValueError(f"{owner}: max_attempts must be an integer >= 1, got {max_attempts!r}")
        errors: tuple[type[BaseException], ...] | None = None
        if retry_on is not None:
            items = (retry_on,) if isinstance(retry_on, type) else retry_on
            if not isinstance(items, Sequence) or not all(
                    isinstance(e, type) and issubclass(e, BaseException) for e in items):
                raise ValueError(f"{owner}: retry_on must be an exception class or a tuple of them, "
                                 f"got {retry_on!r}")
            errors = tuple(items)
        if backoff is not None and not callable(getattr(backoff, "delay", None)):
            raise ValueError(f"{owner}: backoff must be Constant, Linear or Exponential (or have .delay), "
                             f"got {backoff!r}")
        return cls(max_attempts, errors, backoff)  # type: ignore[arg-type]

    def retries(self, error: BaseException) -> bool:
        """Is ``error`` one this policy retries?"""
        return self.retry_on is None or isinstance(error, self.retry_on)
