"""The Cloud Tasks adapter against the real ``gcloud-tasks-emulator``.

A recording HTTP server stands in for the app: the emulator pushes every task to it, and the tests
assert on what it received. What the emulator cannot do (named-task dedupe, OIDC, dispatch
deadlines) is checked on the ``Task`` messages the adapter builds, and dedupe once more against a
small gRPC server that refuses a reused name the way Cloud Tasks does.
"""
from __future__ import annotations

import dataclasses
import datetime
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from core.config import Settings
from core.tasks.errors import ConfigurationError, EnqueueError
from core.tasks.queues import QueueConfig, RetryConfig, parse_queue_config
from core.tasks.transports.base import EnqueueStatus, TaskRequest, Transport
from core.tasks.transports.cloudtasks import (
    CloudTasksTransport,
    build_create_request,
    build_queue,
    build_task,
    sync_queues,
)
from tests.services.tasks_emulator import TasksEmulator, free_port, start_tasks_emulator

MAX_RETRIES = 2
UTC = datetime.UTC


# --- a recording app --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class Recorder:
    """A threaded HTTP server that records every request; paths ending in ``/fail`` answer 500."""

    def __init__(self) -> None:
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        received = Received(
            method=request.method,
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=request.get_data(),
            at=time.time(),
        )
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()
        return Response(status=500 if request.path.endswith("/fail") else 200)(environ, start_response)

    def under(self, prefix: str) -> list[Received]:
        with self._changed:
            return [item for item in self._received if item.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int, timeout: float = 15.0) -> list[Received]:
        """The requests under ``prefix`` once there are at least ``count`` of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self._received if item.path.startswith(prefix)]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    break
                self._changed.wait(remaining)
        assert len(found) >= count, f"{len(found)} of {count} requests under {prefix} arrived"
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture(scope="module")
def emulator(recorder: Recorder) -> Iterator[TasksEmulator]:
    started = start_tasks_emulator(
        target_port=recorder.port, queues=["default", "other"], max_retries=MAX_RETRIES,
        project="test-project", location="europe-west1",
    )
    yield started
    started.stop()


@pytest.fixture
def tasks_settings(emulator: TasksEmulator, tmp_path: Path) -> Settings:
    return Settings(
        project=emulator.project,
        tasks_region=emulator.location,
        tasks_backend="cloudtasks",
        tasks_emulator_host=emulator.host,
        queue_yaml=tmp_path / "no-queue.yaml",
    )


@pytest.fixture
def transport(tasks_settings: Settings) -> Iterator[CloudTasksTransport]:
    with CloudTasksTransport(tasks_settings) as created:
        yield created


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    """Settings for tests that bring their own server (or none)."""
    return Settings(project="test-project", tasks_region="europe-west1", queue_yaml=tmp_path / "no-queue.yaml")


def unique_prefix() -> str:
    return f"/_tasks/t-{uuid.uuid4().hex[:12]}"


# --- end to end through the emulator ----------------------------------------------------------

def test_is_a_transport(transport: CloudTasksTransport) -> None:
    assert isinstance(transport, Transport)


def test_app_engine_task_arrives_with_path_body_and_headers(
    transport: CloudTasksTransport, recorder: Recorder, emulator: TasksEmulator,
) -> None:
    prefix = unique_prefix()
    request = TaskRequest(
        queue="default", path=f"{prefix}/deferred", body=b'{"fn": "send_mail"}',
        headers={"Content-Type": "application/json", "X-Task-Signature": "sig-123"},
    )
    [result] = transport.enqueue_many([request])

    assert result.status is EnqueueStatus.CREATED and result.error is None
    assert result.queue_task_name is not None
    assert result.queue_task_name.startswith(emulator.queue_path("default") + "/tasks/")
    [got] = recorder.wait_for(prefix, 1)
    assert (got.method, got.path, got.body) == ("POST", f"{prefix}/deferred", b'{"fn": "send_mail"}')
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-task-signature"] == "sig-123"
    # The emulator sends the full queue path where Cloud Tasks sends the short name.
    assert got.headers["x-appengine-queuename"] == emulator.queue_path("default")
    assert got.headers["x-appengine-taskname"] == result.queue_task_name.rsplit("/", 1)[1]
    assert got.headers["x-appengine-taskexecutioncount"] == "0"
    assert got.headers["x-appengine-taskretrycount"] == "0"


def test_http_target_posts_to_the_target_url(
    tasks_settings: Settings, recorder: Recorder, emulator: TasksEmulator,
) -> None:
    settings = tasks_settings.replace(
        tasks_target="http", tasks_target_url=f"http://127.0.0.1:{recorder.port}/_tasks/app/",
        tasks_service_account="tasks@test-project.iam.gserviceaccount.com",
    )
    prefix = unique_prefix()
    with CloudTasksTransport(settings) as transport:
        [result] = transport.enqueue_many(
            [TaskRequest(queue="default", path=prefix + "/x", body=b"payload", headers={"X-Custom": "1"})]
        )
    assert result.status is EnqueueStatus.CREATED
    [got] = recorder.wait_for(f"/_tasks/app{prefix}", 1)
    assert got.path == f"/_tasks/app{prefix}/x"
    assert (got.method, got.body, got.headers["x-custom"]) == ("POST", b"payload", "1")
    assert got.headers["x-cloudtasks-queuename"] == emulator.queue_path("default")
    assert got.headers["x-cloudtasks-taskexecutioncount"] == "0"
    assert "x-appengine-queuename" not in got.headers


def test_enqueue_many_creates_100_tasks_that_all_arrive(
    transport: CloudTasksTransport, recorder: Recorder,
) -> None:
    prefix = unique_prefix()
    requests = [
        TaskRequest(queue="default", path=f"{prefix}/{index}", body=str(index).encode()) for index in range(100)
    ]
    results = transport.enqueue_many(requests)

    assert [result.status for result in results] == [EnqueueStatus.CREATED] * 100
    arrived = recorder.wait_for(prefix, 100)
    assert sorted(int(item.body) for item in arrived) == list(range(100))
    assert all(item.path == f"{prefix}/{item.body.decode()}" for item in arrived)


def test_eta_in_the_future_is_honoured(transport: CloudTasksTransport, recorder: Recorder) -> None:
    prefix = unique_prefix()
    eta = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1.5)
    later, now = transport.enqueue_many([
        TaskRequest(queue="default", path=f"{prefix}/later", body=b"", eta=eta),
        TaskRequest(queue="default", path=f"{prefix}/now", body=b""),
    ])
    assert later.ok and now.ok

    arrived = recorder.wait_for(prefix, 2)
    assert [item.path for item in arrived] == [f"{prefix}/now", f"{prefix}/later"]
    delayed = arrived[1]
    assert delayed.at >= eta.timestamp() - 0.1  # never before its schedule time (clock slack only)
    assert float(delayed.headers["x-appengine-tasketa"]) == pytest.approx(eta.timestamp(), abs=1e-3)


def test_failing_route_is_retried_up_to_max_retries(
    transport: CloudTasksTransport, recorder: Recorder, emulator: TasksEmulator,
) -> None:
    prefix = unique_prefix()
    [result] = transport.enqueue_many([TaskRequest(queue="other", path=f"{prefix}/fail", body=b"boom")])
    assert result.status is EnqueueStatus.CREATED

    attempts = recorder.wait_for(prefix, MAX_RETRIES + 1)
    # Once the emulator gives up the task leaves the queue; then no further attempt may come.
    deadline = time.monotonic() + 10
    while any(True for _ in transport.client.list_tasks(parent=emulator.queue_path("other"))):
        assert time.monotonic() < deadline, "the failing task never left the queue"
        time.sleep(0.05)
    time.sleep(0.5)  # several rounds of the emulator's 0.1 s dispatch loop
    attempts = recorder.under(prefix)
    assert len(attempts) == MAX_RETRIES + 1
    assert [item.headers["x-appengine-taskexecutioncount"] for item in attempts] == ["0", "1", "2"]
    assert {item.body for item in attempts} == {b"boom"}


def test_named_task_keeps_its_name(
    transport: CloudTasksTransport, recorder: Recorder, emulator: TasksEmulator,
) -> None:
    prefix = unique_prefix()
    name = f"welcome-{uuid.uuid4().hex}"
    [result] = transport.enqueue_many([TaskRequest(queue="default", path=prefix, body=b"", name=name)])

    assert result.status is EnqueueStatus.CREATED
    assert result.queue_task_name == f"{emulator.queue_path('default')}/tasks/{name}"
    [got] = recorder.wait_for(prefix, 1)
    assert got.headers["x-appengine-taskname"] == name


def test_a_refused_request_fails_alone(transport: CloudTasksTransport, recorder: Recorder) -> None:
    prefix = unique_prefix()
    results = transport.enqueue_many([
        TaskRequest(queue="default", path=f"{prefix}/a", body=b"a"),
        TaskRequest(queue="no-such-queue", path=f"{prefix}/b", body=b"b"),
        TaskRequest(queue="default", path=f"{prefix}/c", body=b"c", method="BREW"),
        TaskRequest(queue="default", path=f"{prefix}/d", body=b"d"),
    ])

    assert [result.status for result in results] == [
        EnqueueStatus.CREATED, EnqueueStatus.FAILED, EnqueueStatus.FAILED, EnqueueStatus.CREATED,
    ]
    refused, unbuildable = results[1].error, results[2].error
    assert isinstance(refused, EnqueueError) and "no-such-queue" in str(refused)
    assert refused.__cause__ is not None and "FailedPrecondition" in type(refused.__cause__).__name__
    assert isinstance(unbuildable, EnqueueError) and isinstance(unbuildable.__cause__, ValueError)
    assert sorted(item.body for item in recorder.wait_for(prefix, 2)) == [b"a", b"d"]


def test_unreachable_service_fails_every_request_without_raising(offline_settings: Settings) -> None:
    settings = offline_settings.replace(tasks_emulator_host=f"127.0.0.1:{free_port()}")
    with CloudTasksTransport(settings, timeout=5) as transport:
        results = transport.enqueue_many(
            [TaskRequest(queue="default", path="/_tasks/x", body=b"") for _ in range(3)]
        )
    assert [result.status for result in results] == [EnqueueStatus.FAILED] * 3
    assert all(isinstance(result.error, EnqueueError) and not result.ok for result in results)


def test_nothing_connects_before_the_first_enqueue(offline_settings: Settings) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        settings = offline_settings.replace(tasks_emulator_host=f"127.0.0.1:{listener.getsockname()[1]}")
        transport = CloudTasksTransport(settings, timeout=2)
        with pytest.raises(TimeoutError):
            listener.accept()
        listener.settimeout(10)
        worker = threading.Thread(
            target=transport.enqueue_many, args=([TaskRequest(queue="default", path="/x", body=b"")],),
        )
        worker.start()
        connection, _ = listener.accept()  # the first enqueue opens the channel
        connection.close()
        worker.join()
        transport.close()


def test_sync_queues_creates_updates_and_pauses_queues(tasks_settings: Settings, emulator: TasksEmulator) -> None:
    settings = tasks_settings.replace(project=f"sync-{uuid.uuid4().hex[:8]}")
    configs = parse_queue_config(
        "queue:\n"
        "- name: mails\n  rate: 20/s\n  bucket_size: 20\n  max_concurrent_requests: 10\n"
        "  retry_parameters: {task_retry_limit: 10, task_age_limit: 1d, min_backoff_seconds: 1}\n"
        "- name: frozen\n  rate: 0/s\n"
    )
    parent = f"projects/{settings.project}/locations/{settings.tasks_region}"

    synced = sync_queues(settings, configs)

    assert synced == [f"{parent}/queues/{name}" for name in configs]
    with CloudTasksTransport(settings) as transport:
        listed = {queue.name: queue for queue in transport.client.list_queues(parent=parent)}
        assert set(listed) == set(synced)
        mails = listed[f"{parent}/queues/mails"]
        assert mails.rate_limits.max_dispatches_per_second == 20
        assert mails.rate_limits.max_concurrent_dispatches == 10
        assert mails.retry_config.max_attempts == 11
        assert mails.retry_config.max_retry_duration == datetime.timedelta(days=1)
        assert listed[f"{parent}/queues/frozen"].state.name == "PAUSED"
        assert listed[f"{parent}/queues/mails"].state.name == "RUNNING"

        # A second run updates what exists and resumes a queue that got a rate again.
        configs["frozen"] = dataclasses.replace(configs["frozen"], rate_per_second=1.0)
        assert sync_queues(settings, configs, client=transport.client) == synced
        states = {queue.name: queue.state.name for queue in transport.client.list_queues(parent=parent)}
        assert states == dict.fromkeys(synced, "RUNNING")


# --- the messages the adapter builds (what the emulator cannot check) ---------------------------

BASE = Settings(project="proj", tasks_region="us-central1")


def test_app_engine_task_message() -> None:
    eta = datetime.datetime(2031, 5, 4, 12, 30, 15, 250000, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    request = TaskRequest(
        queue="default", path="/_tasks/deferred", body=b"{}", headers={"Content-Type": "application/json"},
        name="abc-123", eta=eta, target_version="v7", method="PUT",
    )
    create = build_create_request(BASE, request, dispatch_deadline=datetime.timedelta(minutes=20))

    assert create.parent == "projects/proj/locations/us-central1/queues/default"
    task = create.task
    assert task.name == "projects/proj/locations/us-central1/queues/default/tasks/abc-123"
    app = task.app_engine_http_request
    assert (app.relative_uri, app.http_method.name, app.body) == ("/_tasks/deferred", "PUT", b"{}")
    assert dict(app.headers) == {"Content-Type": "application/json"}
    assert app.app_engine_routing.version == "v7"
    assert task.schedule_time == eta
    assert task.dispatch_deadline == datetime.timedelta(minutes=20)
    assert "http_request" not in task


def test_unnamed_task_without_eta_leaves_both_to_the_queue() -> None:
    task = build_task(BASE, TaskRequest(queue="default", path="/x", body=b""))
    assert task.name == ""
    assert "schedule_time" not in task and "dispatch_deadline" not in task
    assert "app_engine_routing" not in task.app_engine_http_request


def test_http_target_message_carries_an_oidc_token() -> None:
    settings = BASE.replace(
        tasks_target="http", tasks_target_url="https://app.example.com/",
        tasks_service_account="tasks@proj.iam.gserviceaccount.com",
    )
    task = build_task(settings, TaskRequest(queue="default", path="/_tasks/deferred", body=b"b", headers={"A": "1"}))

    http = task.http_request
    assert (http.url, http.http_method.name, http.body, dict(http.headers)) == (
        "https://app.example.com/_tasks/deferred", "POST", b"b", {"A": "1"},
    )
    assert http.oidc_token.service_account_email == "tasks@proj.iam.gserviceaccount.com"
    assert http.oidc_token.audience == "https://app.example.com/"
    assert "app_engine_http_request" not in task

    custom = build_task(
        settings.replace(tasks_oidc_audience="my-audience"), TaskRequest(queue="q", path="/p", body=b""),
    )
    assert custom.http_request.oidc_token.audience == "my-audience"


def test_the_first_of_several_accounts_signs_the_token() -> None:
    settings = BASE.replace(
        tasks_target="http", tasks_target_url="https://app.example.com",
        tasks_service_account=" tasks@proj.iam.gserviceaccount.com , old@proj.iam.gserviceaccount.com",
    )
    task = build_task(settings, TaskRequest(queue="default", path="/_tasks/deferred", body=b""))
    assert task.http_request.oidc_token.service_account_email == "tasks@proj.iam.gserviceaccount.com"


def test_dispatch_deadline_is_kept_in_the_range_cloud_tasks_accepts() -> None:
    http = BASE.replace(tasks_target="http", tasks_target_url="https://a", tasks_service_account="s@p")
    request = TaskRequest(queue="default", path="/x", body=b"")
    hour = datetime.timedelta(hours=1)
    assert build_task(http, request, dispatch_deadline=hour).dispatch_deadline == datetime.timedelta(minutes=30)
    assert build_task(BASE, request, dispatch_deadline=hour).dispatch_deadline == hour
    assert build_task(BASE, request, dispatch_deadline=datetime.timedelta(seconds=1)).dispatch_deadline == (
        datetime.timedelta(seconds=15)
    )


def test_transport_takes_dispatch_deadlines_from_queue_config(tasks_settings: Settings) -> None:
    settings = tasks_settings.replace(project=f"deadline-{uuid.uuid4().hex[:8]}")
    configs = parse_queue_config("queue:\n- name: slow\n  dispatch_deadline: 25m\n")
    sync_queues(settings, {**configs, "fast": QueueConfig(name="fast")})
    with CloudTasksTransport(settings, queues=configs) as transport:
        for queue in ("slow", "fast"):  # paused, so the tasks stay listed
            transport.client.pause_queue(name=transport.queue_path(queue))
        results = transport.enqueue_many([
            TaskRequest(queue="slow", path="/_tasks/none", body=b""),
            TaskRequest(queue="fast", path="/_tasks/none", body=b""),
        ])
        assert all(result.ok for result in results)
        [slow] = transport.client.list_tasks(parent=transport.queue_path("slow"))
        [fast] = transport.client.list_tasks(parent=transport.queue_path("fast"))
    assert slow.dispatch_deadline == datetime.timedelta(minutes=25)
    assert "dispatch_deadline" not in fast  # a queue missing from queue.yaml keeps Cloud Tasks' default


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks_target": "pubsub"}, "TASKS_TARGET"),
        ({"tasks_target": "http"}, "TASKS_TARGET_URL"),
        ({"tasks_target": "http", "tasks_target_url": "https://a"}, "TASKS_SERVICE_ACCOUNT"),
    ],
)
def test_unusable_settings_are_refused_at_construction(changes: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CloudTasksTransport(BASE.replace(**changes))


def test_queue_message_maps_queue_yaml_fields() -> None:
    config = QueueConfig(
        name="background", rate_per_second=20.0, bucket_size=40, max_concurrent_requests=10,
        retry=RetryConfig(
            task_retry_limit=10, task_age_limit=datetime.timedelta(days=1), min_backoff_seconds=0.5,
            max_backoff_seconds=600, max_doublings=5,
        ),
        target="v2.worker",
    )
    queue, mask = build_queue(BASE, config)

    assert queue.name == "projects/proj/locations/us-central1/queues/background"
    assert queue.rate_limits.max_dispatches_per_second == 20.0
    assert queue.rate_limits.max_burst_size == 40
    assert queue.rate_limits.max_concurrent_dispatches == 10
    retry = queue.retry_config
    assert retry.max_attempts == 11
    assert retry.max_retry_duration == datetime.timedelta(days=1)
    assert retry.min_backoff == datetime.timedelta(seconds=0.5)
    assert retry.max_backoff == datetime.timedelta(seconds=600)
    assert retry.max_doublings == 5
    assert (queue.app_engine_routing_override.service, queue.app_engine_routing_override.version) == ("worker", "v2")
    assert "rate_limits.max_burst_size" not in mask
    assert set(mask) >= {"rate_limits.max_dispatches_per_second", "retry_config.max_attempts"}


def test_queue_message_for_unlimited_and_paused_queues() -> None:
    queue, mask = build_queue(BASE, QueueConfig(name="default", rate_per_second=0))
    assert queue.retry_config.max_attempts == -1
    assert queue.retry_config.max_retry_duration == datetime.timedelta(0)
    assert "rate_limits.max_dispatches_per_second" not in mask
    assert "rate_limits.max_concurrent_dispatches" not in mask
    assert "app_engine_routing_override" not in queue


# --- dedupe, against a server that refuses a reused task name as Cloud Tasks does ---------------

class _DedupingCloudTasks:
    """The one rule of CreateTask the emulator lacks: a name is accepted once."""

    def __init__(self) -> None:
        from google.cloud import tasks_v2

        self._task_type = tasks_v2.Task
        self.names: set[str] = set()
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()
        handler = grpc.unary_unary_rpc_method_handler(
            self._create_task,
            request_deserializer=tasks_v2.CreateTaskRequest.deserialize,
            response_serializer=tasks_v2.Task.serialize,
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("google.cloud.tasks.v2.CloudTasks", {"CreateTask": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _create_task(self, request: object, context: grpc.ServicerContext) -> object:
        task = request.task  # type: ignore[attr-defined]
        with self._lock:
            self.metadata.append(dict(context.invocation_metadata()))
            name = task.name or f"{request.parent}/tasks/{uuid.uuid4().hex}"  # type: ignore[attr-defined]
            if name in self.names:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Requested entity already exists")
            self.names.add(name)
        task.name = name
        return task


def test_a_reused_name_is_a_duplicate_not_a_failure(offline_settings: Settings) -> None:
    service = _DedupingCloudTasks()
    try:
        settings = offline_settings.replace(tasks_emulator_host=f"127.0.0.1:{service.port}")
        with CloudTasksTransport(settings, max_workers=2) as transport:
            first = transport.enqueue_many([TaskRequest(queue="default", path="/x", body=b"", name="once")])
            again = transport.enqueue_many([
                TaskRequest(queue="default", path="/x", body=b"", name="once"),
                TaskRequest(queue="default", path="/x", body=b""),
                TaskRequest(queue="default", path="/x", body=b"", name="twice"),
            ])
    finally:
        service.server.stop(grace=None)

    named = f"{transport.queue_path('default')}/tasks/once"
    assert [result.status for result in first] == [EnqueueStatus.CREATED]
    assert [result.status for result in again] == [
        EnqueueStatus.DUPLICATE, EnqueueStatus.CREATED, EnqueueStatus.CREATED,
    ]
    assert again[0].queue_task_name == named and again[0].error is None and again[0].ok
    # Every call carries the routing header the generated client would send.
    assert all(
        meta["x-goog-request-params"] == "parent=" + transport.queue_path("default")
        for meta in service.metadata
    )
    assert all("x-goog-api-client" in meta for meta in service.metadata)


def test_a_task_deadline_overrides_the_queue_deadline(tasks_settings: Settings) -> None:
    settings = tasks_settings.replace(project=f"task-deadline-{uuid.uuid4().hex[:8]}")
    configs = parse_queue_config("queue:\n- name: slow\n  dispatch_deadline: 25m\n")
    sync_queues(settings, configs)
    with CloudTasksTransport(settings, queues=configs) as transport:
        transport.client.pause_queue(name=transport.queue_path("slow"))
        assert transport.enqueue_many([TaskRequest(queue="slow", path="/_tasks/none", body=b"",
                                                   dispatch_deadline=datetime.timedelta(seconds=90))])[0].ok
        [task] = transport.client.list_tasks(parent=transport.queue_path("slow"))
    assert task.dispatch_deadline == datetime.timedelta(seconds=90)


def test_delete_task_answers_false_where_the_server_cannot_delete(transport: CloudTasksTransport) -> None:
    # The emulator answers DeleteTask with UNIMPLEMENTED (HTTP 501); a task record's revocation covers that.
    assert transport.delete_task("default", "no-such-task") is False
