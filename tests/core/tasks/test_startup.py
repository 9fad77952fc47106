"""Startup tasks: queued once per deployed version, run by the queue, retried when they fail."""
from __future__ import annotations

import threading
import time

import pytest

from core import db
from core.tasks import message, wire
from core.tasks.outbox import OUTBOX_KIND, sweep_outbox
from core.tasks.registry import isolated_registry
from core.tasks.startup import (
    STARTUP_KIND,
    StartupTask,
    runStartupTasks,
    startup_overview,
    startup_task,
    startup_task_name,
)
from core.tasks.transports.base import EnqueueResult, EnqueueStatus
from tests.conftest import TaskQueue

CALLS: list[str] = []
FAILURES = {"left": 0}


def warm_cache() -> None:
    CALLS.append("warm_cache")


def migrate() -> None:
    CALLS.append("migrate")


def fails_twice() -> None:
    CALLS.append("fails_twice")
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise RuntimeError("not yet")


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    FAILURES["left"] = 0


@pytest.fixture
def registry():
    with isolated_registry() as fresh:
        assert StartupTask(warm_cache) is warm_cache
        startup_task(migrate)
        StartupTask(fails_twice)
    return fresh


@pytest.fixture
def build(make_app, settings, registry):
    def build_app(version: str = "v1"):
        app = make_app({}, settings=settings.replace(app_version=version), registry=registry)
        return app, TaskQueue(app)
    return build_app


def names(*funcs) -> list[str]:
    return sorted(f"{__name__}.{f.__name__}" for f in funcs)


def test_startup_tasks_are_queued_once_per_version_and_run_by_the_queue(build):
    app, queue = build("v1")
    runtime = app.extensions["core"]
    assert sorted(runStartupTasks(runtime)) == names(warm_cache, migrate, fails_twice)
    assert CALLS == [] and len(queue.pending) == 3
    assert {t.request.name for t in queue.pending} == {startup_task_name("v1", n)
                                                        for n in names(warm_cache, migrate, fails_twice)}
    queue.run_pending()
    assert sorted(CALLS) == ["fails_twice", "migrate", "warm_cache"]
    assert runStartupTasks(runtime) == []            # a later instance of the same version
    assert queue.pending == []
    overview = startup_overview(runtime)
    assert overview["version"] == "v1" and sorted(overview["done"]) == names(warm_cache, migrate, fails_twice)


def test_a_new_version_runs_them_again(build):
    app, queue = build("v1")
    runStartupTasks(app.extensions["core"])
    queue.run_pending()
    app2, queue2 = build("v2")
    assert len(runStartupTasks(app2.extensions["core"])) == 3
    queue2.run_pending()
    assert sorted(CALLS) == sorted(["fails_twice", "migrate", "warm_cache"] * 2)
    assert {e.key.name for e in db.Query(STARTUP_KIND).run()} == {"v1", "v2"}


def test_concurrent_starts_of_one_version_queue_them_once(build):
    app, queue = build("v1")
    runtime = app.extensions["core"]
    barrier = threading.Barrier(3)
    results: list[list[str]] = []

    def start() -> None:
        barrier.wait()
        results.append(runStartupTasks(runtime))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(len(r) for r in results) == [0, 0, 3]
    assert len(queue.pending) == 3


def test_a_failing_startup_task_is_retried_by_the_queue(build):
    app, queue = build("v1")
    FAILURES["left"] = 2
    runStartupTasks(app.extensions["core"])
    outcomes = queue.run_pending(max_attempts=5, raise_errors=False)
    assert CALLS.count("fails_twice") == 3
    assert sorted(o.status for o in outcomes) == [200, 200, 200, 500, 500]
    record = db.get(db.key(STARTUP_KIND, "v1"))
    assert f"{__name__}.fails_twice" in record["done"] and "not yet" in record["last_error"]


def test_a_queue_that_is_down_does_not_block_the_start(build):
    app, queue = build("v1")
    original = queue.transport.enqueue_many
    queue.transport.enqueue_many = lambda requests: [EnqueueResult(EnqueueStatus.FAILED, error=OSError("down"))
                                                     for _ in requests]
    assert len(runStartupTasks(app.extensions["core"])) == 3
    assert queue.pending == [] and len(db.Query(OUTBOX_KIND).run()) == 3
    queue.transport.enqueue_many = original
    import datetime

    assert sweep_outbox(app.extensions["core"], older_than=datetime.timedelta(0)) == 3
    queue.run_pending()
    assert sorted(CALLS) == ["fails_twice", "migrate", "warm_cache"]


def test_a_task_queued_by_another_version_does_not_run_here(build):
    app, queue = build("v1")
    runStartupTasks(app.extensions["core"])
    pending = list(queue.pending)
    queue.pending.clear()
    app2, queue2 = build("v2")                  # v2 took over before v1's tasks were delivered
    queue2.transport.pending.extend(pending)
    queue2.run_pending()
    assert CALLS == []


def test_a_duplicate_delivery_runs_nothing_twice(build):
    app, queue = build("v1")
    runStartupTasks(app.extensions["core"])
    copies = list(queue.pending)
    queue.run_pending()
    queue.pending.extend(copies)
    queue.run_pending()
    assert sorted(CALLS) == ["fails_twice", "migrate", "warm_cache"]


def test_background_start_returns_at_once_and_queues(build):
    app, queue = build("v1")
    assert runStartupTasks(app.extensions["core"], background=True) == []
    deadline = time.monotonic() + 30
    while len(queue.pending) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(queue.pending) == 3


def test_only_plain_functions_without_arguments():
    def needs(value) -> None:
        pass

    class Holder:
        def method(self) -> None:
            pass

    with isolated_registry():
        needs.__qualname__ = "needs"
        with pytest.raises(TypeError, match="no arguments"):
            StartupTask(needs)
        with pytest.raises(TypeError, match="module-level"):
            StartupTask(Holder.method)


def test_a_run_queued_by_an_earlier_version_as_a_deferred_call_still_runs(build):
    """Runs queued before startup runs were a kind of their own are still in queues at a deploy."""
    app, queue = build("v1")
    runtime = app.extensions["core"]
    runStartupTasks(runtime)
    queued = [message.decode(task.request.body) for task in queue.pending]
    queue.pending.clear()
    client = app.test_client()
    for envelope in queued:
        earlier = message.Envelope("deferred", {"target": "core.tasks.startup.run_startup_task", "args": [
            envelope.payload["startup"], envelope.payload["version"]], "kwargs": {}}, envelope.queue)
        request = wire.build_request(runtime, earlier, "/_tasks/deferred")
        client.post(request.path, data=request.body, headers=request.headers)
    assert sorted(CALLS) == ["fails_twice", "migrate", "warm_cache"]
    assert sorted(startup_overview(runtime)["done"]) == names(warm_cache, migrate, fails_twice)
