"""``async def`` task targets: awaited by every runner, refused where they could never run."""
from __future__ import annotations

import asyncio
import contextvars
import datetime
import functools
import threading
from typing import Any

import pytest

from core import current, db
from core.module import Module
from core.tasks import (
    CallableTask,
    CallableTaskBase,
    PeriodicTask,
    PermanentTaskFailure,
    QueryIter,
    StartupTask,
    aio,
    callDeferred,
    lease,
)
from core.tasks.auth.signing import sign_cron_ping
from core.tasks.callable import DONE, queue_run
from core.tasks.callable import get_run as get_callable_run
from core.tasks.errors import UnsupportedTargetError
from core.tasks.periodic.declare import spec_of
from core.tasks.periodic.kind import STATE_KIND
from core.tasks.queryiter.runs import FINISHED, STOPPED, get_run
from core.tasks.registry import isolated_registry
from core.tasks.startup import runStartupTasks
from core.tasks.transports.inline import TaskFailed
from tests.conftest import TaskQueue

MARK = "aio_mark"


async def _mark(name: str, **values: Any) -> None:
    """Write a mark after yielding to the loop: only a coroutine run to its end leaves one."""
    await asyncio.sleep(0)
    entity = db.Entity(db.key(MARK, name))
    entity.update(values)
    db.put(entity)


def mark(name: str) -> db.Entity | None:
    return db.get(db.key(MARK, name))


# --- aio.call and aio.run, on their own ---------------------------------------------------------

async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


async def explode() -> None:
    await asyncio.sleep(0)
    raise LookupError("from inside the coroutine")


def test_call_returns_a_plain_result_and_awaits_a_coroutine():
    assert aio.call(lambda x: x + 1, 1) == 2
    assert aio.call(double, 21) == 42
    # A plain function that returns a coroutine (a wrapper, a partial) is awaited all the same.
    assert aio.call(functools.partial(double, 4)) == 8
    assert aio.call(lambda: double(5)) == 10


def test_the_coroutines_error_reaches_the_caller():
    with pytest.raises(LookupError, match="from inside the coroutine"):
        aio.call(explode)


def test_inside_a_running_loop_it_runs_on_a_helper_thread_with_the_callers_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("aio_test_var")
    seen: list[Any] = []

    async def target() -> str:
        seen.append((var.get(), threading.current_thread() is threading.main_thread()))
        return await double(3)

    async def caller() -> int:
        var.set("from the caller")
        return aio.call(target)  # a sync runner called from async code: asyncio.run would refuse

    assert asyncio.run(caller()) == 6
    assert seen == [("from the caller", False)]


def test_tasks_a_coroutine_leaves_behind_are_cancelled_when_it_ends():
    states: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            states.append("cancelled")
            raise

    async def leaves_a_task() -> None:
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)

    aio.call(leaves_a_task)
    assert states == ["cancelled"]


def test_an_async_generator_returned_at_run_time_is_a_permanent_failure():
    async def generate():
        yield 1

    with pytest.raises(PermanentTaskFailure, match="async generator"):
        aio.call(lambda: generate())


# --- refused where declared ---------------------------------------------------------------------

async def async_gen_target():
    yield 1


def gen_target():
    yield 1


async def async_answer(self) -> bool:
    return False


@pytest.mark.parametrize("declare, message", [
    (lambda: callDeferred(async_gen_target), "deferred function .*async_gen_target is an async generator"),
    (lambda: callDeferred(queue="q")(gen_target), "deferred function .*gen_target is a generator function"),
    (lambda: PeriodicTask(0, cronName="t-aio")(async_gen_target), "periodic task .*async generator"),
    (lambda: StartupTask(async_gen_target), "startup task .*async generator"),
    (lambda: CallableTask(type("AsyncCanCall", (CallableTaskBase,), {"key": "a1", "canCall": async_answer})),
     "canCall .*must be a plain def"),
    (lambda: CallableTask(type("AsyncSkel", (CallableTaskBase,), {"key": "a2", "dataSkel": async_answer})),
     "dataSkel .*must be a plain def"),
    (lambda: CallableTask(type("GenExecute", (CallableTaskBase,), {"key": "a3", "execute": async_gen_target})),
     "execute .*async generator"),
    (lambda: type("GenEntry", (QueryIter,), {"handleEntry": classmethod(async_gen_target)}),
     "QueryIter hook .*async_gen_target is an async generator"),
    (lambda: type("GenFinish", (QueryIter,), {"handleFinish": classmethod(gen_target)}),
     "QueryIter hook .*generator function"),
])
def test_targets_no_runner_can_run_are_refused_at_declaration(declare, message):
    with isolated_registry() as registry:
        with pytest.raises(UnsupportedTargetError, match=message) as caught:
            declare()
    assert isinstance(caught.value, TypeError)
    tables = (registry.deferred, registry.periodic, registry.startup, registry.callable, registry.query_iters)
    assert [len(table) for table in tables] == [0] * 5  # refused before anything was registered


# --- awaited by every runner, through the real handler ---------------------------------------------

@callDeferred
async def async_deferred(name: str, when: datetime.datetime) -> None:
    await _mark(name, when=when, language=current.language.get())


@callDeferred
async def async_fails(name: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(f"{name} failed inside the coroutine")


@callDeferred(lock="aio-{name}")
async def async_locked(name: str) -> None:
    await asyncio.sleep(0)
    await _mark(name, held=lease.current_holder(f"aio-{name}") is not None)


class AsyncModule(Module):
    @callDeferred
    async def refresh(self, name: str) -> None:
        await _mark(name, path=self.module_path)


@PeriodicTask(0, cronName="t-aio-periodic")
async def async_periodic() -> None:
    await _mark("periodic")


@pytest.fixture
def app(make_app):
    return make_app({"asyncmod": AsyncModule}, languages=("en", "de"))


def test_an_async_deferred_function_runs_to_completion(app, task_queue):
    when = datetime.datetime(2026, 3, 4, 5, 6)
    token = current.language.set("de")  # the caller's context travels into the coroutine
    try:
        async_deferred("deferred", when)
    finally:
        current.language.reset(token)
    assert mark("deferred") is None
    (outcome,) = task_queue.run_pending()
    assert outcome.status == 200 and outcome.ran
    assert mark("deferred")["when"] == when.replace(tzinfo=datetime.UTC)
    assert mark("deferred")["language"] == "de"


def test_an_async_deferred_failure_is_retried_not_acknowledged(app, task_queue):
    async_fails("boom")
    with pytest.raises(TaskFailed, match="answered 500") as caught:
        task_queue.run_pending(max_attempts=2)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_an_async_locked_function_holds_its_lock_while_it_awaits(app, task_queue):
    async_locked("locked")
    task_queue.run_pending()
    assert mark("locked")["held"] is True and lease.current_holder("aio-locked") is None


def test_an_async_module_method_runs_on_the_mounted_instance(app, task_queue):
    app.extensions["core"].modules["asyncmod"].refresh("method")
    task_queue.run_pending()
    assert mark("method")["path"] == app.extensions["core"].modules["asyncmod"].module_path


def test_call_deferred_false_runs_an_async_function_now(app, task_queue):
    async_deferred("now", datetime.datetime(2026, 1, 1), _call_deferred=False)
    assert mark("now") is not None and task_queue.pending == []


def test_an_async_periodic_task_runs_on_a_signed_ping(app, client, settings, task_queue):
    path = "/_tasks/cron/t-aio-periodic"
    assert client.get(path, headers=sign_cron_ping(settings.tasks_secret, path)).status_code == 200
    task_queue.run_pending()
    assert mark("periodic") is not None
    state = db.get(db.key(STATE_KIND, spec_of(async_periodic).name))
    assert state["runs"] == 1 and state["last_outcome"] != "failed"


async def async_startup() -> None:
    await _mark("startup")


def test_an_async_startup_task_runs(make_app, settings):
    with isolated_registry() as registry:
        StartupTask(async_startup)
    app = make_app({}, settings=settings.replace(app_version="v-aio"), registry=registry)
    runStartupTasks(app.extensions["core"])
    TaskQueue(app).run_pending()
    assert mark("startup") is not None


class AsyncCallable(CallableTaskBase):
    key = "async_callable"
    name = "Async callable"

    def canCall(self) -> bool:  # noqa: N802
        return True

    async def execute(self, label: str) -> None:
        await _mark("callable", label=label)


class OneUser:
    """Ann, the only user: a callable task always runs on behalf of someone."""

    def load_from_request(self, request: Any) -> Any:
        return None

    def load_by_id(self, user_id: str) -> Any:
        return {"name": "ann"} if user_id == "ann" else None

    def id_of(self, user: Any) -> str:
        return user["name"]

    def is_admin(self, user: Any) -> bool:
        return True


def test_an_async_callable_task_executes_and_its_run_is_done(make_app):
    with isolated_registry() as registry:
        CallableTask(AsyncCallable)
    app = make_app({}, registry=registry, users=OneUser())
    token = current.user.set({"name": "ann"})
    try:
        run = queue_run(app.extensions["core"], AsyncCallable(), {"label": "hello"})
    finally:
        current.user.reset(token)
    TaskQueue(app).run_pending()
    assert mark("callable")["label"] == "hello"
    assert get_callable_run(run.key.name)["status"] == DONE


class AsyncIter(QueryIter):
    """Every hook ``async def``; ``handleError`` stops the run at ``customData['stop_at']``."""

    maxEntriesPerChunk = 3

    @classmethod
    async def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        await asyncio.sleep(0)
        if entry.key.id == customData.get("stop_at"):
            raise ValueError(f"refusing {entry.key.id}")
        entry["seen_by"] = customData["token"]
        db.put(entry)

    @classmethod
    async def handleError(cls, entry: db.Entity, customData: Any, exception: Exception) -> bool:  # noqa: N802, N803
        await _mark(f"error-{customData['token']}", error=str(exception))
        return False

    @classmethod
    async def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        await _mark(f"finish-{customData['token']}", total=totalCount)


def put_items(count: int) -> None:
    items = []
    for i in range(1, count + 1):
        entity = db.Entity(db.key("aio_item", i))
        entity["n"] = i
        items.append(entity)
    db.put(items)


def test_a_query_iter_with_async_hooks_handles_every_entry_and_finishes(app, task_queue):
    put_items(10)
    run_id = AsyncIter.startIterOnQuery(db.Query("aio_item"), customData={"token": "t1"})
    task_queue.run_pending()
    assert {e.get("seen_by") for e in db.Query("aio_item").run()} == {"t1"}
    assert mark("finish-t1")["total"] == 10 and get_run(run_id).status == FINISHED


def test_an_async_handle_error_answer_is_awaited_and_stops_the_run(app, task_queue):
    put_items(10)
    run_id = AsyncIter.startIterOnQuery(db.Query("aio_item"), customData={"token": "t2", "stop_at": 5})
    task_queue.run_pending()
    # A coroutine is always true: unawaited, handleError would have said "go on".
    assert get_run(run_id).status == STOPPED and mark("finish-t2") is None
    assert mark("error-t2")["error"] == "refusing 5"
    assert len([e for e in db.Query("aio_item").run() if e.get("seen_by") == "t2"]) == 4


class AsyncBatch(QueryIter):
    """An ``async def handleEntries``: whole batches, one awaited call each."""

    @classmethod
    async def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        raise AssertionError("the batch handler takes every entry here")

    @classmethod
    async def handleEntries(cls, entries: list[db.Entity], customData: Any) -> None:  # noqa: N802, N803
        await asyncio.sleep(0)
        for entry in entries:
            entry["seen_by"] = "batch"
        db.put(entries)


def test_an_async_batch_handler_is_awaited(app, task_queue):
    put_items(10)
    run_id = AsyncBatch.startIterOnQuery(db.Query("aio_item"))
    task_queue.run_pending()
    assert {e.get("seen_by") for e in db.Query("aio_item").run()} == {"batch"}
    assert get_run(run_id).status == FINISHED and get_run(run_id).processed == 10
