"""Google Cloud Tasks adapter: turns :class:`TaskRequest` objects into Cloud Tasks tasks.

One of the few modules that import Google Cloud libraries. Nothing here touches the network or
builds a client before the first call: the gRPC channel is opened on first use, to the emulator
named by ``settings.tasks_emulator_host`` (insecure) or to Cloud Tasks with application default
credentials.

``enqueue_many`` starts every ``CreateTask`` call at once as a gRPC future (at most
``max_workers`` in flight) and returns when each one is answered: with 100 requests the caller
waits for the slowest call, not for the sum of them. The futures use the same channel, deadline
and request metadata as the generated client's ``create_task``, without its per-call Python
wrapper, which costs as much CPU as the call itself.
"""
from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from core.config import Settings
from core.tasks.errors import ConfigurationError, EnqueueError
from core.tasks.google_admin import BOUNDED, admin_calls
from core.tasks.queues import QueueTable
from core.tasks.transports.base import EnqueueResult, EnqueueStatus, TaskRequest
from core.tasks.transports.cloudtasks_controls import CloudTasksQueueControls

if TYPE_CHECKING:
    from core.tasks.queues import QueueConfig

logger = logging.getLogger(__name__)

TARGETS = ("appengine", "http")
#: The generated client's default deadline for ``CreateTask`` (it does not retry that call).
DEFAULT_TIMEOUT = 20.0
#: The dispatch deadlines Cloud Tasks accepts, per target.
MIN_DISPATCH_DEADLINE = datetime.timedelta(seconds=15)
MAX_DISPATCH_DEADLINE = {"appengine": datetime.timedelta(hours=24), "http": datetime.timedelta(minutes=30)}


# --- pure builders: settings + request -> Cloud Tasks messages --------------------------------

def queue_path(settings: Settings, queue: str) -> str:
    """``projects/{project}/locations/{region}/queues/{queue}``, from settings alone."""
    return f"projects/{settings.project}/locations/{settings.tasks_region}/queues/{queue}"


def task_path(settings: Settings, queue: str, name: str) -> str:
    return f"{queue_path(settings, queue)}/tasks/{name}"


def check_settings(settings: Settings) -> None:
    """Raise :class:`ConfigurationError` for settings that cannot produce a deliverable task."""
    if settings.tasks_target not in TARGETS:
        raise ConfigurationError(f"TASKS_TARGET must be one of {TARGETS}, not {settings.tasks_target!r}")
    if settings.tasks_target == "http":
        if not settings.tasks_target_url:
            raise ConfigurationError("TASKS_TARGET=http needs TASKS_TARGET_URL (the app's base URL)")
        if not settings.tasks_service_accounts and not settings.tasks_emulator_host:
            # Without an OIDC token the app cannot tell our tasks from anyone's requests.
            raise ConfigurationError("TASKS_TARGET=http needs TASKS_SERVICE_ACCOUNT to sign tasks with OIDC")


_HTTP_METHODS: dict[str, tasks_v2.HttpMethod] = {
    name: getattr(tasks_v2.HttpMethod, name) for name in ("POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
}


def _http_method(method: str) -> tasks_v2.HttpMethod:
    try:
        return _HTTP_METHODS[method.upper()]
    except KeyError:
        raise ValueError(f"Cloud Tasks cannot send HTTP method {method!r}") from None


def _timestamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(datetime.UTC))
    return stamp


def clamp_dispatch_deadline(settings: Settings, deadline: datetime.timedelta) -> datetime.timedelta:
    """``deadline`` moved into the range Cloud Tasks accepts for the target (it refuses others)."""
    upper = MAX_DISPATCH_DEADLINE.get(settings.tasks_target, MAX_DISPATCH_DEADLINE["http"])
    return max(MIN_DISPATCH_DEADLINE, min(deadline, upper))


def build_task(
    settings: Settings, request: TaskRequest, *, dispatch_deadline: datetime.timedelta | None = None,
) -> tasks_v2.Task:
    """The Cloud Tasks ``Task`` for one request, for the configured target.

    App Engine target: the path is relative to the app, routed to ``request.target_version`` when
    given. HTTP target: the path is appended to ``tasks_target_url`` and the task carries an OIDC
    token for the first account of ``tasks_service_account`` whose audience is ``tasks_oidc_audience``, defaulting to
    ``tasks_target_url``. Without ``dispatch_deadline`` Cloud Tasks applies its default (10 min).
    """
    method = _http_method(request.method)
    headers = dict(request.headers)
    task = tasks_v2.Task()
    if settings.tasks_target == "appengine":
        app_request = tasks_v2.AppEngineHttpRequest(
            http_method=method, relative_uri=request.path, headers=headers, body=request.body,
        )
        if request.target_version:
            app_request.app_engine_routing = tasks_v2.AppEngineRouting(version=request.target_version)
        task.app_engine_http_request = app_request
    elif settings.tasks_target == "http":
        if not settings.tasks_target_url:
            raise ConfigurationError("TASKS_TARGET=http needs TASKS_TARGET_URL")
        http_request = tasks_v2.HttpRequest(
            http_method=method,
            url=settings.tasks_target_url.rstrip("/") + request.path,
            headers=headers,
            body=request.body,
        )
        if settings.tasks_service_accounts:
            # Several accounts may be accepted (a rotation); the first one signs.
            http_request.oidc_token = tasks_v2.OidcToken(
                service_account_email=settings.tasks_service_accounts[0],
                audience=settings.tasks_oidc_audience or settings.tasks_target_url,
            )
        task.http_request = http_request
    else:
        raise ConfigurationError(f"unknown tasks target {settings.tasks_target!r}")
    if request.name:
        task.name = task_path(settings, request.queue, request.name)
    if request.eta is not None:
        task.schedule_time = _timestamp(request.eta)
    if dispatch_deadline is not None:
        deadline = duration_pb2.Duration()
        deadline.FromTimedelta(clamp_dispatch_deadline(settings, dispatch_deadline))
        task.dispatch_deadline = deadline
    return task


def build_create_request(
    settings: Settings, request: TaskRequest, *, dispatch_deadline: datetime.timedelta | None = None,
) -> tasks_v2.CreateTaskRequest:
    return tasks_v2.CreateTaskRequest(
        parent=queue_path(settings, request.queue),
        task=build_task(settings, request, dispatch_deadline=dispatch_deadline),
    )


# --- the client -------------------------------------------------------------------------------

def make_client(settings: Settings) -> tasks_v2.CloudTasksClient:
    """A Cloud Tasks client: insecure gRPC to the emulator when one is configured, else ADC."""
    if settings.tasks_emulator_host:
        channel = grpc.insecure_channel(settings.tasks_emulator_host)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()


def _enqueue_error(what: str, error: BaseException) -> EnqueueError:
    """Wrap a failure in our error tree, keeping the Google (or build) error as the cause."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        error = api_exceptions.from_grpc_error(error)
    wrapped = EnqueueError(f"{what}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _is_already_exists(error: BaseException) -> bool:
    if isinstance(error, grpc.Call):
        return error.code() is grpc.StatusCode.ALREADY_EXISTS
    return isinstance(error, api_exceptions.AlreadyExists)


class CloudTasksTransport(CloudTasksQueueControls):
    """Creates tasks in Cloud Tasks (or its emulator) concurrently; see :meth:`enqueue_many`.

    Its queue controls (pause, resume, purge, list, run) are Cloud Tasks' own calls.

    ``queues`` (the app's queue table) gives each queue's ``dispatch_deadline`` (a per-task field
    in Cloud Tasks); when omitted it is loaded from ``settings.queue_yaml`` on first use.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_workers: int = 32,
        timeout: float = DEFAULT_TIMEOUT,
        queues: Mapping[str, QueueConfig] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        check_settings(settings)
        self.settings = settings
        #: How many ``CreateTask`` calls may be in flight at once.
        self.max_workers = max_workers
        self.timeout = timeout
        self._queues: Mapping[str, QueueConfig] | None = queues
        self._client: tasks_v2.CloudTasksClient | None = None
        self._lock = threading.Lock()
        self._client_metadata = gapic_v1.client_info.ClientInfo(
            client_library_version=tasks_v2.__version__, gapic_version=tasks_v2.__version__,
        ).to_grpc_metadata()

    @property
    def client(self) -> tasks_v2.CloudTasksClient:
        """The Cloud Tasks client, created on first use (thread-safe)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.settings)
                client = self._client
        return client

    def queue_path(self, queue: str) -> str:
        return queue_path(self.settings, queue)

    @property
    def queues(self) -> Mapping[str, QueueConfig]:
        """The queue configuration: the app's table, or ``settings.queue_yaml``'s loaded on first use."""
        if self._queues is None:
            self._queues = QueueTable.load(self.settings.queue_yaml, default=self.settings.tasks_default_queue)
        return self._queues

    def _dispatch_deadline(self, queue: str) -> datetime.timedelta | None:
        config = self.queues.get(queue)
        return None if config is None else config.dispatch_deadline

    def enqueue(self, request: TaskRequest) -> EnqueueResult:
        return self.enqueue_many([request])[0]

    def enqueue_many(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        """Create every request concurrently; one result per request, in order; never raises.

        ``ALREADY_EXISTS`` for a named task is :attr:`EnqueueStatus.DUPLICATE`; any other failure
        (including a client that cannot be built) is ``FAILED`` with an :class:`EnqueueError`.
        """
        if not requests:
            return []
        try:
            # The bare gRPC method (same channel, credentials and deadline as client.create_task):
            # its ``future()`` lets all calls be in flight at once without a thread each.
            create_task = cast(grpc.UnaryUnaryMultiCallable, self.client.transport.create_task)
            deadlines = {request.queue: self._dispatch_deadline(request.queue) for request in requests}
        except Exception as error:  # no credentials, bad queue.yaml: every request stays with the caller
            failed = _enqueue_error("cannot set up the Cloud Tasks client", error)
            return [EnqueueResult(EnqueueStatus.FAILED, error=failed) for _ in requests]

        results: list[EnqueueResult | None] = [None] * len(requests)
        slots = threading.BoundedSemaphore(self.max_workers)
        in_flight: list[tuple[int, str | None, grpc.Future]] = []
        for index, request in enumerate(requests):
            try:
                create = build_create_request(
                    self.settings, request, dispatch_deadline=request.dispatch_deadline or deadlines[request.queue],
                )
            except Exception as error:
                failed = _enqueue_error(f"cannot build a task for queue {request.queue!r}", error)
                results[index] = EnqueueResult(EnqueueStatus.FAILED, error=failed)
                continue
            metadata = (
                self._client_metadata,
                gapic_v1.routing_header.to_grpc_metadata((("parent", create.parent),)),
            )
            slots.acquire()
            try:
                future = create_task.future(create, timeout=self.timeout, metadata=metadata)
            except Exception as error:
                slots.release()
                failed = _enqueue_error(f"cannot send a task to queue {request.queue!r}", error)
                results[index] = EnqueueResult(EnqueueStatus.FAILED, error=failed)
                continue
            future.add_done_callback(lambda _done: slots.release())
            in_flight.append((index, create.task.name or None, future))

        for index, name, future in in_flight:
            results[index] = self._outcome(requests[index], name, future)
        return [result for result in results if result is not None]

    def _outcome(self, request: TaskRequest, name: str | None, future: grpc.Future) -> EnqueueResult:
        try:
            task = future.result()
        except Exception as error:
            if name and _is_already_exists(error):
                return EnqueueResult(EnqueueStatus.DUPLICATE, queue_task_name=name)
            logger.warning("creating a task in queue %s failed: %s", request.queue, error)
            failed = _enqueue_error(f"Cloud Tasks refused a task for queue {request.queue!r}", error)
            return EnqueueResult(EnqueueStatus.FAILED, queue_task_name=name, error=failed)
        return EnqueueResult(EnqueueStatus.CREATED, queue_task_name=task.name or name)

    def delete_task(self, queue: str, name: str) -> bool:
        """``DeleteTask``; ``False`` when the task is gone or the server can't delete (the emulator: 501)."""
        path = name if name.startswith("projects/") else task_path(self.settings, queue, name)
        try:
            self.client.delete_task(name=path, timeout=self.timeout)
        except (api_exceptions.GoogleAPICallError, grpc.RpcError) as error:
            logger.info("could not delete task %s: %s", path, error)
            return False
        return True

    def close(self) -> None:
        """Close the gRPC channel; a later call opens a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    def __enter__(self) -> CloudTasksTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- queue administration ---------------------------------------------------------------------

def _duration(value: datetime.timedelta | float | None) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    if value is not None:
        seconds = value if isinstance(value, datetime.timedelta) else datetime.timedelta(seconds=value)
        duration.FromTimedelta(seconds)
    return duration


def _routing_override(target: str | None) -> tasks_v2.AppEngineRouting | None:
    """queue.yaml's ``target`` (``service`` or ``version.service``) as App Engine routing."""
    if not target:
        return None
    version, _, service = target.rpartition(".")
    return tasks_v2.AppEngineRouting(service=service, version=version)


def build_queue(settings: Settings, config: QueueConfig) -> tuple[tasks_v2.Queue, list[str]]:
    """The ``Queue`` message for a queue.yaml entry and the field paths it sets (the update mask).

    ``max_attempts`` is ``task_retry_limit + 1`` (queue.yaml counts retries, Cloud Tasks counts
    attempts; no limit is ``-1``); no ``task_age_limit`` is a zero ``max_retry_duration`` (no
    limit). ``bucket_size`` goes to ``max_burst_size``, which the API treats as output only: Cloud
    Tasks derives its own from the rate, so it stays out of the update mask. A paused queue
    (rate 0) keeps its current rate; :func:`sync_queues` pauses it instead.
    """
    retry = config.retry
    rate_limits = tasks_v2.RateLimits(max_burst_size=config.bucket_size)
    fields: list[str] = []
    if not config.paused:
        rate_limits.max_dispatches_per_second = config.rate_per_second
        fields.append("rate_limits.max_dispatches_per_second")
    if config.max_concurrent_requests is not None:
        rate_limits.max_concurrent_dispatches = config.max_concurrent_requests
        fields.append("rate_limits.max_concurrent_dispatches")
    retry_config = tasks_v2.RetryConfig(
        max_attempts=-1 if retry.task_retry_limit is None else retry.task_retry_limit + 1,
        max_retry_duration=_duration(retry.task_age_limit),
        min_backoff=_duration(retry.min_backoff_seconds),
        max_backoff=_duration(retry.max_backoff_seconds),
        max_doublings=retry.max_doublings,
    )
    fields += [
        "retry_config.max_attempts", "retry_config.max_retry_duration", "retry_config.min_backoff",
        "retry_config.max_backoff", "retry_config.max_doublings",
    ]
    queue = tasks_v2.Queue(
        name=queue_path(settings, config.name), rate_limits=rate_limits, retry_config=retry_config,
    )
    routing = _routing_override(config.target) if settings.tasks_target == "appengine" else None
    if routing is not None:
        queue.app_engine_routing_override = routing
        fields.append("app_engine_routing_override")
    return queue, fields


def sync_queues(
    settings: Settings,
    queues: Mapping[str, QueueConfig],
    *,
    client: tasks_v2.CloudTasksClient | None = None,
) -> list[str]:
    """Create or update every queue through the Cloud Tasks API; returns the queue paths synced.

    Existing queues are updated in place (only the fields the config sets), the others created. A
    queue with rate 0 is paused and any other one resumed, as a queue.yaml deployment does. Do not
    also deploy queue.yaml with gcloud to the same project: Google warns against managing queues
    both ways. Raises :class:`ConfigurationError` naming the queue the API refused.
    """
    api: Any = make_client(settings) if client is None else client
    parent = f"projects/{settings.project}/locations/{settings.tasks_region}"
    with admin_calls("Cloud Tasks", api, f"listing the queues of {parent}", close=client is None) as step:
        existing = {queue.name: queue for queue in api.list_queues(parent=parent, **BOUNDED)}
        synced: list[str] = []
        for config in queues.values():
            queue, fields = build_queue(settings, config)
            step.now = f"syncing queue {queue.name}"
            current = existing.get(queue.name)
            if current is None:
                current = api.create_queue(parent=parent, queue=queue, **BOUNDED)
                logger.info("created queue %s", queue.name)
            else:
                current = api.update_queue(queue=queue, update_mask=field_mask_pb2.FieldMask(paths=fields), **BOUNDED)
                logger.info("updated queue %s", queue.name)
            paused = current.state == tasks_v2.Queue.State.PAUSED
            if config.paused and not paused:
                api.pause_queue(name=queue.name, **BOUNDED)
            elif paused and not config.paused:
                api.resume_queue(name=queue.name, **BOUNDED)
            synced.append(queue.name)
        return synced
