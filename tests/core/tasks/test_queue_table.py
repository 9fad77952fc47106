"""One queue table per app: an unknown queue fails at the call on every transport, and nothing is queued."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import db
from core.tasks import PeriodicTask, QueryIter, callDeferred
from core.tasks.errors import ConfigurationError
from core.tasks.outbox import outbox_size
from core.tasks.queryiter.runs import RUN_KIND as QUERY_RUN_KIND
from core.tasks.queues import QueueTable, UnknownQueue
from core.tasks.registry import isolated_registry
from core.tasks.runtime import get_runtime
from core.tasks.transports.base import EnqueueStatus, TaskRequest
from core.tasks.transports.cloudtasks import CloudTasksTransport
from core.tasks.transports.inline import InlineTransport, TaskFailed
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport
from core.tasks.workflows.groups import group
from core.tasks.workflows.store import ROOT_KIND
from tests.services.tasks_emulator import TasksEmulator, free_port, start_tasks_emulator

QUEUE_YAML = "queue:\n- name: mails\n  retry_parameters:\n    task_retry_limit: 3\n"


@callDeferred
def send_report(month: str) -> None:
    pass


@callDeferred(queue="typo")
def declared_with_a_typo() -> None:
    pass


class TypoWalker(QueryIter):
    queueName = "typo"  # noqa: N815 - ViUR's name

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        pass


@pytest.fixture(scope="module")
def tasks_emulator() -> Iterator[TasksEmulator]:
    started = start_tasks_emulator(target_port=free_port(), queues=["default", "mails"], max_retries=0)
    yield started
    started.stop()


@pytest.fixture
def queue_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "queue.yaml"
    path.write_text(QUEUE_YAML)
    return path


def _queued(transport: Any, emulator: TasksEmulator | None) -> int:
    """Tasks the app's transport holds, wherever it keeps them."""
    if isinstance(transport, InlineTransport):
        return len(transport.pending)
    if isinstance(transport, LocalTransport):
        return transport.store.pending()
    assert isinstance(transport, CloudTasksTransport) and emulator is not None
    return sum(len(list(transport.client.list_tasks(parent=transport.queue_path(q)))) for q in ("default", "mails"))


@pytest.fixture(params=["inline", "local", "cloudtasks"])
def backend_app(request, make_app, settings, queue_yaml):
    """An app over each transport, with ``queue.yaml`` defining ``mails`` (and the default queue)."""
    options: dict[str, Any] = {"queue_yaml": queue_yaml, "tasks_backend": request.param}
    emulator = None
    if request.param == "cloudtasks":
        emulator = request.getfixturevalue("tasks_emulator")
        options.update(tasks_emulator_host=emulator.host, project=emulator.project, tasks_region=emulator.location)
    app = make_app(settings=settings.replace(**options))
    return app, emulator


def test_an_unknown_queue_fails_at_the_call_on_every_transport_and_nothing_is_queued(backend_app, queue_yaml):
    app, emulator = backend_app
    runtime = get_runtime()
    with pytest.raises(UnknownQueue) as caught:
        send_report("2026-10", _queue="reprots")
    message = str(caught.value)
    assert "send_report(_queue=...)" in message and "'reprots'" in message and str(queue_yaml) in message
    assert isinstance(caught.value, ConfigurationError)
    with pytest.raises(UnknownQueue, match="reprots"):
        db.run_in_transaction(lambda: send_report("2026-11", _queue="reprots"))
    assert outbox_size() == 0, "nothing parked in the outbox"
    assert _queued(runtime.transport, emulator) == 0, "nothing queued"

    send_report("2026-10", _queue="mails")  # a queue of the table goes through as before
    assert _queued(runtime.transport, emulator) == 1 and outbox_size() == 0


def test_a_queue_declared_with_a_typo_fails_at_the_call(app, task_queue):
    with pytest.raises(UnknownQueue, match=r"declared_with_a_typo \(declared with queue=...\): unknown queue 'typo'"):
        declared_with_a_typo()
    assert task_queue.pending == [] and outbox_size() == 0


def test_a_query_iterator_with_an_unknown_queue_name_fails_at_the_start(app, task_queue):
    db.put(db.Entity(db.key("walked", 1)))
    with pytest.raises(UnknownQueue, match=r"TypoWalker.queueName: unknown queue 'typo'.*queue.yaml"):
        TypoWalker.startIterOnQuery(db.Query("walked"))
    assert task_queue.pending == [] and db.Query(QUERY_RUN_KIND).run() == []


def test_a_workflow_member_with_an_unknown_queue_fails_when_the_group_starts(app, task_queue):
    with pytest.raises(UnknownQueue, match=r"send_report\(_queue=...\): unknown queue 'typo'"):
        group([send_report.s("2026-10"), send_report.s("2026-11", _queue="typo")]).start()
    assert task_queue.pending == [] and db.Query(ROOT_KIND).run() == []


def nightly_export() -> None:
    pass


def test_a_periodic_task_with_an_unknown_queue_fails_when_its_ping_would_queue_it(make_app, caplog):
    with isolated_registry() as registry:
        PeriodicTask(cronName="typo-queue", queue="typo")(nightly_export)
    app = make_app(registry=registry)
    from tests.conftest import TaskQueue

    queue = TaskQueue(app)
    with pytest.raises(TaskFailed, match="answered 500"):
        queue.ping_cron("typo-queue")
    assert any("nightly_export" in str(r.exc_info[1]) and "unknown queue 'typo'" in str(r.exc_info[1])
               and "queue.yaml" in str(r.exc_info[1])
               for r in caplog.records if r.exc_info), "the log names the queue and the file"
    assert queue.pending == [] and outbox_size() == 0


def test_the_local_queue_store_refuses_a_queue_its_table_lacks(tmp_path, queue_yaml):
    store = LocalQueueStore(tmp_path / "queue.sqlite3", queues=QueueTable.load(queue_yaml))
    try:
        results = store.add([TaskRequest(queue="reprots", path="/_tasks/deferred", body=b"x"),
                             TaskRequest(queue="mails", path="/_tasks/deferred", body=b"y")])
        assert [r.status for r in results] == [EnqueueStatus.FAILED, EnqueueStatus.CREATED]
        assert isinstance(results[0].error, UnknownQueue)
        assert "'reprots'" in str(results[0].error) and str(queue_yaml) in str(results[0].error)
        assert [t.body for t in store.tasks()] == [b"y"]
    finally:
        store.close()


def test_the_inline_transport_refuses_a_queue_its_table_lacks(queue_yaml):
    transport = InlineTransport(QueueTable.load(queue_yaml))
    results = transport.enqueue_many([TaskRequest(queue="reprots", path="/_tasks/deferred", body=b"x"),
                                      TaskRequest(queue="mails", path="/_tasks/deferred", body=b"y")])
    assert [r.status for r in results] == [EnqueueStatus.FAILED, EnqueueStatus.CREATED]
    assert isinstance(results[0].error, UnknownQueue) and str(queue_yaml) in str(results[0].error)
    assert [t.request.body for t in transport.pending] == [b"y"]


def test_the_app_has_one_table_that_every_transport_reads(make_app, settings, queue_yaml):
    make_app(settings=settings.replace(queue_yaml=queue_yaml))
    runtime = get_runtime()
    assert runtime.queues is runtime.queues
    assert sorted(runtime.queues) == ["default", "mails"] and runtime.queues["mails"].retry.task_retry_limit == 3
    assert runtime.transport.queues is runtime.queues  # type: ignore[attr-defined]
