"""Wake-on-enqueue: the transport's datagram starts an idle dispatcher's push; a lost one only delays it."""
from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.tasks.queues import QueueConfig
from core.tasks.transports.base import EnqueueStatus, TaskRequest
from core.tasks.transports.local.dispatcher import LocalDispatcher
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport
from core.tasks.transports.local.wake import WakeListener, WakeSender

from .recording_server import Recorder

#: Far longer than any deadline below: a task that runs in time was woken, not found by polling.
LONG_POLL = 300.0
DEADLINE = 20.0
QUEUES = {"default": QueueConfig(name="default", rate_per_second=500.0, bucket_size=500)}


def _task(body: bytes, **fields: object) -> TaskRequest:
    return TaskRequest(queue="default", path="/ok", body=body, **fields)  # type: ignore[arg-type]


@contextmanager
def _idle_dispatcher(store: LocalQueueStore, recorder: Recorder, **options: Any) -> Iterator[LocalDispatcher]:
    """A started dispatcher that has pushed one task and gone back to sleep: the next task it
    pushes was found by a wakeup or a poll, not by its first look at the store."""
    LocalTransport(store).enqueue_many([_task(b"first")])
    dispatcher = LocalDispatcher(store, recorder.url, QUEUES, **options)
    dispatcher.start()
    try:
        recorder.wait_calls("/ok", 1, timeout=DEADLINE)
        yield dispatcher
    finally:
        dispatcher.stop()


@pytest.fixture
def idle_dispatcher(store: LocalQueueStore, recorder: Recorder) -> Iterator[LocalDispatcher]:
    with _idle_dispatcher(store, recorder, poll_interval=LONG_POLL) as dispatcher:
        yield dispatcher


def test_an_enqueue_wakes_an_idle_dispatcher(
    store: LocalQueueStore, recorder: Recorder, idle_dispatcher: LocalDispatcher
) -> None:
    transport = LocalTransport(store)
    for i in range(3):
        [result] = transport.enqueue_many([_task(str(i).encode())])
        assert result.status is EnqueueStatus.CREATED
        recorder.wait_calls("/ok", 2 + i, timeout=DEADLINE)
    assert [c.body for c in recorder.calls] == [b"first", b"0", b"1", b"2"]


def test_a_task_scheduled_later_still_runs_on_time(
    store: LocalQueueStore, recorder: Recorder, idle_dispatcher: LocalDispatcher
) -> None:
    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2.5)
    LocalTransport(store).enqueue_many([_task(b"later", eta=eta)])
    [_, call] = recorder.wait_calls("/ok", 2, timeout=DEADLINE)
    assert call.body == b"later"


def test_a_lost_wakeup_is_found_by_the_fallback_poll(store: LocalQueueStore, recorder: Recorder) -> None:
    with _idle_dispatcher(store, recorder, poll_interval=0.2):
        store.add([_task(b"unannounced")])  # committed, but no datagram is sent
        [_, call] = recorder.wait_calls("/ok", 2, timeout=DEADLINE)
    assert call.body == b"unannounced"


def test_without_wakeups_the_dispatcher_polls(store: LocalQueueStore, recorder: Recorder) -> None:
    with _idle_dispatcher(store, recorder, poll_interval=0.2, wakeups=False):
        LocalTransport(store).enqueue_many([_task(b"polled")])
        [_, call] = recorder.wait_calls("/ok", 2, timeout=DEADLINE)
    assert call.body == b"polled"


def test_enqueue_with_no_dispatcher_listening_succeeds(store: LocalQueueStore, recorder: Recorder) -> None:
    results = LocalTransport(store).enqueue_many([_task(b"waits")])
    assert [r.status for r in results] == [EnqueueStatus.CREATED]
    assert LocalDispatcher(store, recorder.url, QUEUES).run_until_idle(timeout=DEADLINE) == 1
    assert [c.body for c in recorder.calls] == [b"waits"]


def test_notify_never_blocks_on_a_full_socket(tmp_path: Path) -> None:
    listener = WakeListener.bind(tmp_path / "queue.db")
    assert listener is not None
    sender = WakeSender(tmp_path / "queue.db")
    try:
        done = threading.Event()

        def flood() -> None:
            for _ in range(5000):  # far more than a datagram socket queues
                sender.notify()
            done.set()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        assert done.wait(DEADLINE), "notify blocked on a socket nobody reads"
        listener.drain()  # every queued wakeup is read at once ...
        with pytest.raises(BlockingIOError):
            listener.sock.recv(16)  # ... leaving none behind
        sender.notify()
        assert listener.sock.recv(16) == b""  # and the next one arrives
    finally:
        sender.close()
        listener.close()


def test_notify_ignores_a_missing_listener(tmp_path: Path) -> None:
    sender = WakeSender(tmp_path / "nobody.db")
    try:
        sender.notify()  # nothing listens: no error, nothing waits
        sender.notify()
    finally:
        sender.close()
