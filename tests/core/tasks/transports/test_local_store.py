"""The local queue's store and transport: one transaction per call, dedupe, validation, sharing."""
from __future__ import annotations

import datetime
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.tasks.transports.base import EnqueueStatus, TaskRequest, Transport
from core.tasks.transports.local import store as local_store
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

REPO_ROOT = Path(__file__).resolve().parents[4]
UTC = datetime.UTC


def _request(**fields: object) -> TaskRequest:
    values: dict[str, object] = {"queue": "default", "path": "/ok", "body": b"payload"}
    values.update(fields)
    return TaskRequest(**values)  # type: ignore[arg-type]


def test_is_a_transport(store: LocalQueueStore) -> None:
    assert isinstance(LocalTransport(store), Transport)


def test_hundred_requests_in_one_transaction(store: LocalQueueStore) -> None:
    transport = LocalTransport(store)
    transport.enqueue_many([_request()])  # opens the connection and creates the schema
    statements: list[str] = []
    store.connection().set_trace_callback(statements.append)
    results = transport.enqueue_many([_request(body=str(i).encode()) for i in range(100)])
    store.connection().set_trace_callback(None)

    assert [r.status for r in results] == [EnqueueStatus.CREATED] * 100
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
    names = {r.queue_task_name for r in results}
    assert len(names) == 100 and all(name and name.isdigit() for name in names)
    assert store.pending() == 101
    assert sorted(t.body for t in store.tasks(limit=200))[:3] == [b"0", b"1", b"10"]


def test_stored_task_keeps_the_request(store: LocalQueueStore) -> None:
    eta = datetime.datetime.now(UTC) + datetime.timedelta(minutes=5)
    [result] = LocalTransport(store).enqueue_many([
        _request(path="/x?a=1", method="PUT", name="job-1", eta=eta, target_version="v7",
                 headers={"Content-Type": "application/json", "X-Custom": "yes"}, body=b'{"a": 1}'),
    ])
    assert result.status is EnqueueStatus.CREATED and result.queue_task_name == "job-1"
    [task] = store.tasks()
    assert (task.queue, task.name, task.named, task.method, task.path) == ("default", "job-1", True, "PUT", "/x?a=1")
    assert task.headers == {"Content-Type": "application/json", "X-Custom": "yes"}
    assert task.body == b'{"a": 1}' and task.target_version == "v7"
    assert abs((task.eta - eta).total_seconds()) < 1e-3
    assert (task.state, task.retry_count, task.execution_count, task.last_status) == ("queued", 0, 0, None)
    assert store.counts() == {"default": {"queued": 1, "leased": 0, "failed": 0}}


def test_reserved_headers_are_dropped_and_content_type_defaults(store: LocalQueueStore) -> None:
    LocalTransport(store).enqueue_many([
        _request(headers={"Host": "evil", "X-AppEngine-QueueName": "forged", "X-CloudTasks-TaskName": "x",
                          "Content-Length": "1", "X-Kept": "1"}),
    ])
    [task] = store.tasks()
    assert task.headers == {"X-Kept": "1", "Content-Type": "application/octet-stream"}


def test_named_tasks_dedupe(store: LocalQueueStore) -> None:
    transport = LocalTransport(store)
    first = transport.enqueue_many([_request(name="once"), _request(name="once"), _request(name="other")])
    assert [r.status for r in first] == [EnqueueStatus.CREATED, EnqueueStatus.DUPLICATE, EnqueueStatus.CREATED]
    again = transport.enqueue_many([_request(name="once"), _request(name="once", queue="background")])
    assert [r.status for r in again] == [EnqueueStatus.DUPLICATE, EnqueueStatus.CREATED]
    assert all(r.ok for r in first + again)
    assert store.pending() == 3


def test_invalid_requests_fail_alone(store: LocalQueueStore) -> None:
    too_late = datetime.datetime.now(UTC) + datetime.timedelta(days=31)
    results = LocalTransport(store).enqueue_many([
        _request(headers={"X-Bad": "line\r\nbreak"}),
        _request(headers={"Bad Name": "x"}),
        _request(eta=too_late),
        _request(method="TRACE"),
        _request(path="/with space"),
        _request(body=b"good"),
    ])
    assert [r.status for r in results] == [EnqueueStatus.FAILED] * 5 + [EnqueueStatus.CREATED]
    assert all(isinstance(r.error, ValueError) for r in results[:5])
    assert [t.body for t in store.tasks()] == [b"good"]


def test_unknown_queue_fails_when_queues_are_known(store: LocalQueueStore) -> None:
    transport = LocalTransport(store, queues={"default"})
    results = transport.enqueue_many([_request(), _request(queue="nowhere"), _request(body=b"2")])
    assert [r.status for r in results] == [EnqueueStatus.CREATED, EnqueueStatus.FAILED, EnqueueStatus.CREATED]
    assert isinstance(results[1].error, LookupError)
    assert store.pending() == 2


def test_storage_errors_become_failed_results(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    transport = LocalTransport(LocalQueueStore(blocker / "queue.db"))
    results = transport.enqueue_many([_request(), _request()])
    assert [r.status for r in results] == [EnqueueStatus.FAILED] * 2
    assert all(r.error is not None for r in results)


def test_concurrent_threads_and_another_process_share_the_file(store: LocalQueueStore, tmp_path: Path) -> None:
    transport = LocalTransport(store)
    errors: list[BaseException] = []

    def enqueue(worker: int) -> None:
        try:
            for call in range(20):
                results = transport.enqueue_many([_request(name=f"w{worker}-c{call}-{i}") for i in range(5)])
                assert all(r.status is EnqueueStatus.CREATED for r in results)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    script = (
        "import sys; from core.tasks.transports.local.store import LocalQueueStore\n"
        "from core.tasks.transports.local.transport import LocalTransport\n"
        "from core.tasks.transports.base import TaskRequest\n"
        "t = LocalTransport(LocalQueueStore(sys.argv[1]))\n"
        "for c in range(20):\n"
        "    batch = [TaskRequest(queue='default', path='/ok', body=b'p', name=f'p-{c}-{i}') for i in range(5)]\n"
        "    assert all(x.ok for x in t.enqueue_many(batch))\n"
    )
    other = subprocess.Popen([sys.executable, "-c", script, str(store.path)], cwd=REPO_ROOT)
    threads = [threading.Thread(target=enqueue, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert other.wait(30) == 0
    assert errors == []
    assert store.pending() == 4 * 20 * 5 + 20 * 5


def test_failed_tasks_can_be_requeued_or_deleted(store: LocalQueueStore) -> None:
    LocalTransport(store).enqueue_many([_request(name="a"), _request(name="b")])
    ids = [t.id for t in store.tasks()]
    conn = store.connection()
    conn.execute("UPDATE task SET state = 2, retry_count = 4, last_status = 500")
    assert [t.name for t in store.failed()] == ["a", "b"] and store.pending() == 0

    assert store.requeue_failed([ids[0]]) == 1
    [queued] = store.tasks(state="queued")
    assert (queued.name, queued.retry_count, queued.state) == ("a", 0, "queued")

    assert store.delete_failed([ids[1]]) == 1
    assert store.failed() == []
    # The deleted task's name stays taken for the retention window, as after a success.
    [dup] = LocalTransport(store).enqueue_many([_request(name="b")])
    assert dup.status is EnqueueStatus.DUPLICATE
    with pytest.raises(ValueError):
        store.tasks(state="sleeping")


def test_a_file_of_the_first_schema_gains_the_deadline_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(local_store._SCHEMA.replace(",\n    deadline REAL", "") + "PRAGMA user_version = 1;")
    conn.close()
    store = LocalQueueStore(path)
    [result] = LocalTransport(store).enqueue_many([_request(dispatch_deadline=datetime.timedelta(seconds=5))])
    assert result.status is EnqueueStatus.CREATED
    assert store.lease_due("default", now=9e12, limit=1)[0].deadline == 5.0
    assert store.connection().execute("PRAGMA user_version").fetchone()[0] == local_store._SCHEMA_VERSION
    store.close()
