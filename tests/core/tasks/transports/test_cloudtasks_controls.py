"""Queue controls through Cloud Tasks' API: against the real emulator where it implements the call,
and against an in-process gRPC server of the service that records every request."""
from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import tasks_v2

from core.config import Settings
from core.tasks.errors import ConfigurationError
from core.tasks.transports.base import QueueControls, TaskRequest
from core.tasks.transports.cloudtasks import CloudTasksTransport
from tests.services.tasks_emulator import TasksEmulator, start_tasks_emulator

from .test_cloudtasks import Recorder, recorder  # noqa: F401 - the recording app, a module fixture

__all__ = ["recorder"]

PARENT = "projects/test-project/locations/europe-west1"


@pytest.fixture(scope="module")
def emulator(recorder: Recorder) -> Iterator[TasksEmulator]:
    started = start_tasks_emulator(target_port=recorder.port, queues=["default", "held"], max_retries=1,
                                   project="test-project", location="europe-west1")
    yield started
    started.stop()


@pytest.fixture
def transport(emulator: TasksEmulator, tmp_path: Path) -> Iterator[CloudTasksTransport]:
    settings = Settings(project=emulator.project, tasks_region=emulator.location, tasks_backend="cloudtasks",
                        tasks_emulator_host=emulator.host, queue_yaml=tmp_path / "no-queue.yaml")
    with CloudTasksTransport(settings) as created:
        yield created


def test_pause_list_resume_and_purge_on_the_emulator(transport: CloudTasksTransport, recorder: Recorder) -> None:
    assert isinstance(transport, QueueControls)
    transport.pause_queue("held")
    assert transport.paused_queues() == {"held"}
    created = transport.enqueue_many([TaskRequest(queue="held", path=f"/_tasks/held/{i}", body=b"x")
                                      for i in range(4)])
    names = [str(result.queue_task_name).rsplit("/", 1)[-1] for result in created]
    time.sleep(1.5)
    assert recorder.under("/_tasks/held/") == []            # paused: nothing pushed
    page = transport.list_tasks("held", limit=10)
    assert sorted(task.name for task in page.tasks) == sorted(names)
    assert {task.path for task in page.tasks} == {f"/_tasks/held/{i}" for i in range(4)}
    transport.resume_queue("held")
    assert transport.paused_queues() == set()
    assert len(recorder.wait_for("/_tasks/held/", 4)) == 4

    transport.pause_queue("held")
    transport.enqueue_many([TaskRequest(queue="held", path="/_tasks/held/purged", body=b"x") for _ in range(3)])
    assert len(transport.list_tasks("held").tasks) == 3
    assert transport.purge_queue("held") is None             # Cloud Tasks does not say how many
    assert transport.list_tasks("held").tasks == []
    transport.resume_queue("held")


def test_run_task_pushes_a_scheduled_task_now(transport: CloudTasksTransport, recorder: Recorder) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    [created] = transport.enqueue_many([TaskRequest(queue="default", path="/_tasks/run-now/1", body=b"x",
                                                    eta=later)])
    name = str(created.queue_task_name).rsplit("/", 1)[-1]
    assert transport.run_task("default", name) is True
    assert len(recorder.wait_for("/_tasks/run-now/", 1)) == 1
    assert transport.run_task("default", "no-such-task") is False


class _RecordingCloudTasks:
    """The queue-control methods of Cloud Tasks, recording each request, as the service answers them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        methods = {
            "PauseQueue": (tasks_v2.PauseQueueRequest, tasks_v2.Queue, self._queue),
            "ResumeQueue": (tasks_v2.ResumeQueueRequest, tasks_v2.Queue, self._queue),
            "PurgeQueue": (tasks_v2.PurgeQueueRequest, tasks_v2.Queue, self._queue),
            "ListQueues": (tasks_v2.ListQueuesRequest, tasks_v2.ListQueuesResponse, self._list_queues),
            "ListTasks": (tasks_v2.ListTasksRequest, tasks_v2.ListTasksResponse, self._list_tasks),
            "RunTask": (tasks_v2.RunTaskRequest, tasks_v2.Task, self._run_task),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._recording(name, answer),
                                                      request_deserializer=request.deserialize,
                                                      response_serializer=response.serialize)
            for name, (request, response, answer) in methods.items()
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("google.cloud.tasks.v2.CloudTasks", handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _recording(self, name: str, answer: Any) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.requests.append((name, request))
            return answer(request, context)
        return handle

    @staticmethod
    def _queue(request: Any, context: grpc.ServicerContext) -> Any:
        return tasks_v2.Queue(name=request.name)

    @staticmethod
    def _list_queues(request: Any, context: grpc.ServicerContext) -> Any:
        return tasks_v2.ListQueuesResponse(queues=[
            tasks_v2.Queue(name=f"{request.parent}/queues/default", state=tasks_v2.Queue.State.RUNNING),
            tasks_v2.Queue(name=f"{request.parent}/queues/bulk", state=tasks_v2.Queue.State.PAUSED),
        ])

    @staticmethod
    def _list_tasks(request: Any, context: grpc.ServicerContext) -> Any:
        first = request.page_token == ""
        task = tasks_v2.Task(name=f"{request.parent}/tasks/t-{'1' if first else '2'}", dispatch_count=3,
                             app_engine_http_request=tasks_v2.AppEngineHttpRequest(relative_uri="/_tasks/deferred"))
        task.schedule_time = datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=datetime.UTC)
        return tasks_v2.ListTasksResponse(tasks=[task], next_page_token="page-2" if first else "")

    @staticmethod
    def _run_task(request: Any, context: grpc.ServicerContext) -> Any:
        if request.name.endswith("/missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
        return tasks_v2.Task(name=request.name)


@pytest.fixture
def service() -> Iterator[_RecordingCloudTasks]:
    server = _RecordingCloudTasks()
    yield server
    server.server.stop(grace=None)


def test_each_control_sends_its_request_to_the_service(service: _RecordingCloudTasks, tmp_path: Path) -> None:
    settings = Settings(project="test-project", tasks_region="europe-west1", queue_yaml=tmp_path / "q.yaml",
                        tasks_emulator_host=f"127.0.0.1:{service.port}")
    with CloudTasksTransport(settings) as transport:
        transport.pause_queue("bulk")
        transport.resume_queue("bulk")
        assert transport.purge_queue("bulk") is None
        assert transport.paused_queues() == {"bulk"}
        first = transport.list_tasks("bulk", limit=1)
        second = transport.list_tasks("bulk", limit=1, cursor=first.cursor)
        assert transport.run_task("bulk", "t-1") is True
        assert transport.run_task("bulk", "missing") is False
    queue = f"{PARENT}/queues/bulk"
    sent = [(name, getattr(request, "name", None) or getattr(request, "parent", None)) for name, request in
            service.requests]
    assert sent == [("PauseQueue", queue), ("ResumeQueue", queue), ("PurgeQueue", queue), ("ListQueues", PARENT),
                    ("ListTasks", queue), ("ListTasks", queue), ("RunTask", f"{queue}/tasks/t-1"),
                    ("RunTask", f"{queue}/tasks/missing")]
    lists = [request for name, request in service.requests if name == "ListTasks"]
    assert [(r.page_size, r.page_token) for r in lists] == [(1, ""), (1, "page-2")]
    assert first.cursor == "page-2" and second.cursor is None
    [task] = first.tasks
    assert (task.name, task.path, task.attempts) == ("t-1", "/_tasks/deferred", 3)
    assert task.schedule_time == datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=datetime.UTC)


def test_a_refusal_names_the_call(service: _RecordingCloudTasks, tmp_path: Path) -> None:
    service.server.stop(grace=None)
    settings = Settings(project="test-project", tasks_region="europe-west1", queue_yaml=tmp_path / "q.yaml",
                        tasks_emulator_host=f"127.0.0.1:{service.port}")
    with CloudTasksTransport(settings, timeout=2.0) as transport, \
            pytest.raises(ConfigurationError, match="Cloud Tasks did not answer pausing queue bulk"):
        transport.pause_queue("bulk")
