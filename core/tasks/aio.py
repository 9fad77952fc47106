"""``async def`` task targets: every runner calls user code through :func:`call`.

A coroutine a target returns is run to completion before the task answers, so an ``async def``
target is never acknowledged unrun. Each run gets a fresh event loop, as ``asyncio.run`` gives
(tasks it leaves behind are cancelled, async generators closed): gunicorn's worker threads have
no loop of their own. When the calling thread already runs a loop (an async caller of an inline
queue or of ``_call_deferred=False``), the coroutine runs on a fresh loop in a helper thread,
with a copy of the caller's context, and the caller's thread waits for it.

What no runner can run is refused where it is declared: a generator or async generator function
as a target (its body would never run), and ``async def`` where an answer is needed at once
(``canCall``, ``dataSkel``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from core.tasks.errors import PermanentTaskFailure, UnsupportedTargetError

__all__ = ["call", "run", "check_runnable", "check_synchronous", "check_hooks"]


def call(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func``; when it returns an awaitable, run that to completion and return its result."""
    result = func(*args, **kwargs)
    if result is None:  # what most tasks return: nothing to await
        return None
    if inspect.isawaitable(result):
        return run(result)
    if inspect.isasyncgen(result):
        raise PermanentTaskFailure(f"{_name(func)} returned an async generator; its body can never run")
    return result


def run(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` on a fresh event loop and return its result (or raise its error)."""
    if not _loop_running():
        return asyncio.run(_await(awaitable))
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tasks-aio") as pool:
        return pool.submit(context.run, asyncio.run, _await(awaitable)).result()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _name(func: Any) -> str:
    func = getattr(func, "__func__", func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def check_runnable(func: Any, what: str) -> None:
    """Refuse a target whose body a task could never run: a (async) generator function."""
    if inspect.isasyncgenfunction(func):
        raise UnsupportedTargetError(f"{what} {_name(func)} is an async generator function (async def with "
                                     "yield): a task could never run its body; remove the yield")
    if inspect.isgeneratorfunction(func):
        raise UnsupportedTargetError(f"{what} {_name(func)} is a generator function (def with yield): a task "
                                     "could never run its body; remove the yield")


def check_synchronous(func: Any, what: str) -> None:
    """Refuse ``async def`` (or any generator) where the caller needs the answer at once."""
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise UnsupportedTargetError(f"{what} {_name(func)} must be a plain def: its answer is needed at once "
                                     "(an async def would answer with a coroutine, which is always true)")
    check_runnable(func, what)


def check_hooks(owner: type, names: Iterable[str], what: str) -> None:
    """:func:`check_runnable` on each hook ``owner`` has under ``names`` (missing or ``None`` ones pass)."""
    for name in names:
        hook = getattr(owner, name, None)
        if hook is not None:
            check_runnable(hook, what)
