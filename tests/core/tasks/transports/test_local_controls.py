"""Queue controls of the local queue against a real dispatcher pushing to a real HTTP server."""
from __future__ import annotations

import time
from typing import Any

from core.tasks.queues import QueueConfig
from core.tasks.transports.base import EnqueueStatus, QueueControls, TaskRequest
from core.tasks.transports.local.dispatcher import LocalDispatcher
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

from .recording_server import Recorder

QUEUES = {name: QueueConfig(name=name, rate_per_second=500.0, bucket_size=500) for name in ("default", "bulk")}


def _fill(transport: LocalTransport, count: int, queue: str = "default", **fields: Any) -> list[str]:
    results = transport.enqueue_many([TaskRequest(queue=queue, path="/ok", body=b"{}", **fields)
                                      for _ in range(count)])
    assert all(r.status is EnqueueStatus.CREATED for r in results)
    return [str(r.queue_task_name) for r in results]


def _settle(recorder: Recorder, quiet: float = 0.5, limit: float = 10.0) -> int:
    """Wait until no push arrived for ``quiet`` seconds; the count then."""
    deadline = time.monotonic() + limit
    seen, since = len(recorder.calls), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if len(recorder.calls) != seen:
            seen, since = len(recorder.calls), time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return seen


def test_the_local_transport_has_queue_controls(store: LocalQueueStore) -> None:
    assert isinstance(LocalTransport(store), QueueControls)


def test_a_paused_queue_keeps_its_tasks_across_dispatcher_restarts_and_resume_drains_it(
    store: LocalQueueStore, recorder: Recorder
) -> None:
    transport = LocalTransport(store)
    transport.pause_queue("default")
    _fill(transport, 50)
    _fill(transport, 5, queue="bulk")
    assert LocalDispatcher(store, recorder.url, QUEUES).run_until_idle(timeout=20) == 5   # only bulk ran
    assert {c.headers["X-Appengine-Queuename"] for c in recorder.calls} == {"bulk"}
    assert transport.paused_queues() == {"default"}
    restarted = LocalDispatcher(store, recorder.url, QUEUES)
    assert restarted.run_until_idle(timeout=20) == 0 and store.pending("default") == 50
    transport.resume_queue("default")
    assert LocalDispatcher(store, recorder.url, QUEUES).run_until_idle(timeout=20) == 50
    assert store.pending() == 0 and transport.paused_queues() == set()


def test_pausing_a_busy_queue_stops_its_pushes_within_a_second(store: LocalQueueStore, recorder: Recorder) -> None:
    transport = LocalTransport(store)
    slow = {"default": QueueConfig(name="default", rate_per_second=100.0, bucket_size=1)}
    _fill(transport, 1000)
    dispatcher = LocalDispatcher(store, recorder.url, slow)
    dispatcher.start()
    try:
        while len(recorder.calls) < 20:
            time.sleep(0.01)
        transport.pause_queue("default")
        paused_at = time.monotonic()
        time.sleep(1.0)
        after_a_second = len(recorder.calls)
        time.sleep(1.0)
        assert len(recorder.calls) == after_a_second, "pushes went on after the pause"
        assert time.monotonic() - paused_at < 5
        assert store.pending("default") == 1000 - after_a_second      # nothing lost, nothing leased away
        transport.resume_queue("default")
        deadline = time.monotonic() + 30
        while store.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert len(recorder.calls) == 1000
    assert len({c.headers["X-Appengine-Taskname"] for c in recorder.calls}) == 1000


def test_purge_deletes_waiting_and_failed_tasks_and_frees_nothing_early(store: LocalQueueStore) -> None:
    transport = LocalTransport(store)
    _fill(transport, 30)
    _fill(transport, 3, queue="bulk")
    [named] = _fill(transport, 1, name="once")
    assert transport.purge_queue("default") == 31
    assert store.pending("default") == 0 and store.pending("bulk") == 3
    # The purged name stays taken for the retention window, as after any other end.
    [again] = transport.enqueue_many([TaskRequest(queue="default", path="/ok", body=b"{}", name=named)])
    assert again.status is EnqueueStatus.DUPLICATE


def test_list_pages_by_schedule_time_and_run_now_makes_a_task_due(store: LocalQueueStore,
                                                                   recorder: Recorder) -> None:
    import datetime
    transport = LocalTransport(store)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    names = _fill(transport, 7) + _fill(transport, 1, eta=later)
    seen, cursor, pages = [], None, 0
    while True:
        page = transport.list_tasks("default", limit=3, cursor=cursor)
        seen += [task.name for task in page.tasks]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == names and pages == 3
    last = transport.list_tasks("default", limit=10).tasks[-1]
    assert (last.name, last.schedule_time, last.attempts, last.state) == (names[-1], later, 0, "queued")
    assert last.body == b"{}"
    assert LocalDispatcher(store, recorder.url, QUEUES).run_until_idle(timeout=20) == 7
    assert transport.run_task("default", names[-1]) is True
    assert transport.run_task("default", "no-such-task") is False
    assert LocalDispatcher(store, recorder.url, QUEUES).run_until_idle(timeout=20) == 1
    assert recorder.calls[-1].headers["X-Appengine-Taskname"] == names[-1]
