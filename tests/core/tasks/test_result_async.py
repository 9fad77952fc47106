"""``result_async`` of task, group and chain handles, awaited with ``asyncio.run`` on the emulator."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.tasks import PermanentTaskFailure, TaskCancelled, TaskFailed, UntrackedTask, callDeferred
from core.tasks.errors import TaskExpired
from core.tasks.workflows import WorkflowFailed, chain, group


@callDeferred(track=True)
def add(a: int, b: int) -> int:
    return a + b


@callDeferred(track=True)
def broken(n: int) -> None:
    raise PermanentTaskFailure(f"{n} cannot be done")


@callDeferred(track=True, expires=30)
def short_lived(n: int) -> int:
    return n


@callDeferred
def untracked(n: int) -> int:
    return n


@callDeferred
def double(n: int) -> int:
    return 2 * n


@callDeferred
def total(results: list[int]) -> int:
    return sum(results)


@callDeferred
def odd_fails(n: int) -> int:
    if n % 2:
        raise PermanentTaskFailure(f"{n} is odd")
    return n


def awaited_while_the_queue_runs(wait: Callable[[], Awaitable[Any]], run: Callable[[], Any]) -> tuple[Any, int]:
    """Await ``wait()`` in a fresh event loop; the queue runs once the wait has polled a few times.

    Returns the awaited value and how often another coroutine got the loop meanwhile: a wait that
    blocked the loop's thread would leave it none.
    """
    async def main() -> tuple[Any, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 10:
                    run()
                await asyncio.sleep(0.01)

        beside = asyncio.create_task(ticker())
        try:
            return await wait(), ticks
        finally:
            beside.cancel()

    return asyncio.run(main())


def test_result_async_waits_for_the_task_without_blocking_the_loop(app, task_queue):
    handle = add(2, 3)
    value, ticks = awaited_while_the_queue_runs(lambda: handle.result_async(timeout=10), task_queue.run_pending)
    assert value == 5 and ticks >= 10


def test_result_async_raises_what_result_raises(app, task_queue):
    failed, cancelled, expired = broken(1), add(1, 1), short_lived(1)
    assert cancelled.cancel()
    task_queue.clock.advance(31)
    task_queue.run_pending(raise_errors=False)
    pending = add(4, 4)
    with pytest.raises(TaskFailed, match="1 cannot be done"):
        asyncio.run(failed.result_async(timeout=5))
    with pytest.raises(TaskCancelled):
        asyncio.run(cancelled.result_async(timeout=5))
    with pytest.raises(TaskExpired):
        asyncio.run(expired.result_async(timeout=5))
    with pytest.raises(UntrackedTask):
        asyncio.run(untracked(1).result_async(timeout=5))
    with pytest.raises(TimeoutError, match="did not finish within 0.2 s"):
        asyncio.run(pending.result_async(timeout=0.2))


def test_group_and_chain_handles_await_their_results(app, task_queue):
    members = group(double.s(n) for n in range(4)).then(total.s()).start()
    steps = chain(double.s(5), double.s()).start()
    drain = lambda: task_queue.run_pending(raise_errors=False, max_attempts=3)  # noqa: E731
    value, ticks = awaited_while_the_queue_runs(lambda: members.result_async(timeout=10), drain)
    assert value == 12 and ticks >= 10
    assert asyncio.run(steps.result_async(timeout=10)) == 20
    failing = group(odd_fails.s(n) for n in range(2)).then(total.s()).start()
    drain()
    with pytest.raises(WorkflowFailed):
        asyncio.run(failing.result_async(timeout=5))
