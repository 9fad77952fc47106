"""The in-process queue for tests: collects task requests; ``run_pending`` drains them.

Draining posts each request through the app's real ``/_tasks`` handler (Flask test client) with the
headers App Engine's Cloud Tasks adds, so verification, decoding and environment restore all run.
Like dramatiq's ``StubBroker.join``, a task that fails re-raises its error in the test.
"""
from __future__ import annotations

import dataclasses
import datetime
import threading
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from core.tasks.errors import PermanentTaskFailure, TaskFailed
from core.tasks.queues import QueueTable, UnknownQueue
from core.tasks.transports.base import (
    EnqueueResult,
    EnqueueStatus,
    QueuedTaskInfo,
    TaskPage,
    TaskRequest,
)

if TYPE_CHECKING:
    from flask import Flask


class RunOutcome(Protocol):
    """What the drain reads of an outcome (``core.tasks.outcome.Outcome`` is one; transports sit below it)."""

    message: str
    error: BaseException | None


@dataclasses.dataclass
class QueuedTask:
    request: TaskRequest
    id: str
    retry_count: int = 0
    execution_count: int = 0
    #: When it is pushed next (``None``: at once): the request's ETA, then its retry's.
    due: datetime.datetime | None = None
    #: The HTTP status of its last push (sent as the queue's previous-response header on a retry).
    previous_response: int | None = None

    def __post_init__(self) -> None:
        if self.due is None:
            self.due = self.request.eta


_EPOCH = datetime.datetime.fromtimestamp(0, datetime.UTC)


class InlineTransport:
    """Keeps requests in memory, in order; named requests dedupe like Cloud Tasks.

    With ``queues`` (the app's queue table) a request for a queue it lacks is refused, as Cloud
    Tasks and the local queue refuse it.
    """

    #: Creating a batch costs no round trips: the dispatcher never routes it through the outbox.
    cheap_batches = True

    def __init__(self, queues: QueueTable | None = None) -> None:
        self.queues = queues
        self.pending: list[QueuedTask] = []
        self.names: set[str] = set()
        self.created = 0
        #: Queues paused at run time: their tasks stay pending and are not run.
        self.paused: set[str] = set()
        self._lock = threading.Lock()

    def enqueue_many(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        results = []
        with self._lock:
            for request in requests:
                if self.queues is not None:
                    try:
                        self.queues.require(request.queue, f"task for {request.path}")
                    except (UnknownQueue, ValueError) as exc:
                        results.append(EnqueueResult(EnqueueStatus.FAILED, error=exc))
                        continue
                if request.name is not None:
                    if request.name in self.names:
                        results.append(EnqueueResult(EnqueueStatus.DUPLICATE, request.name))
                        continue
                    self.names.add(request.name)
                self.created += 1
                task_id = request.name or f"inline-{self.created}"
                self.pending.append(QueuedTask(request, task_id))
                results.append(EnqueueResult(EnqueueStatus.CREATED, task_id))
        return results

    def delete_task(self, queue: str, name: str) -> bool:
        """Take a task out of the queue before it runs; ``False`` if it is not (or no longer) here."""
        with self._lock:
            for index, task in enumerate(self.pending):
                if task.id == name and task.request.queue == queue:
                    del self.pending[index]
                    return True
        return False

    # queue controls (see QueueControls)

    def pause_queue(self, queue: str) -> None:
        with self._lock:
            self.paused.add(queue)

    def resume_queue(self, queue: str) -> None:
        with self._lock:
            self.paused.discard(queue)

    def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self.paused)

    def purge_queue(self, queue: str) -> int:
        with self._lock:
            kept = [task for task in self.pending if task.request.queue != queue]
            purged = len(self.pending) - len(kept)
            self.pending[:] = kept
        return purged

    def list_tasks(self, queue: str, *, limit: int = 100, cursor: str | None = None) -> TaskPage:
        start = int(cursor or 0)
        with self._lock:
            tasks = sorted((t for t in self.pending if t.request.queue == queue),
                           key=lambda t: t.due or _EPOCH)
        page = [QueuedTaskInfo(queue=queue, name=t.id, path=t.request.path, schedule_time=t.due,
                               attempts=t.retry_count, body=t.request.body) for t in tasks[start:start + limit]]
        return TaskPage(page, str(start + limit) if start + limit < len(tasks) else None)

    def run_task(self, queue: str, name: str) -> bool:
        with self._lock:
            for task in self.pending:
                if task.id == name and task.request.queue == queue:
                    task.due = None
                    return True
        return False

    def runnable(self, task: QueuedTask) -> bool:
        """Whether ``task``'s queue may run it now (it is not paused)."""
        return task.request.queue not in self.paused

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.pending)

    def clear(self) -> None:
        with self._lock:
            self.pending.clear()

    def run_pending(self, app: Flask, *, raise_errors: bool = True, max_attempts: int = 1,
                    max_tasks: int = 100_000) -> list[RunOutcome]:
        """Run queued tasks (and the tasks they queue) until none is left.

        A task answering non-2xx is retried up to ``max_attempts`` executions in all. With
        ``raise_errors`` a task's last error, or a permanent failure, is raised here as
        :class:`TaskFailed`. Returns every outcome, in order.
        """
        outcomes: list[RunOutcome] = []
        # The app's runtime (kept there by ``Tasks(app)``): read, not imported, as transports sit below it.
        runtime = app.extensions["core"]
        runtime.outcome_listeners.append(outcomes.append)
        client = app.test_client()
        try:
            handled = 0
            while handled < max_tasks:
                with self._lock:
                    index = next((i for i, t in enumerate(self.pending) if self.runnable(t)), None)
                    if index is None:
                        break
                    task = self.pending.pop(index)
                handled += 1
                failure = push(client, task, outcomes, raise_errors=raise_errors)
                if failure is None:
                    continue
                if task.execution_count < max_attempts:
                    with self._lock:
                        self.pending.append(task)
                    continue
                if raise_errors:
                    raise failure.exception() from failure.error
        finally:
            runtime.outcome_listeners.remove(outcomes.append)
        return outcomes

    @staticmethod
    def _headers(task: QueuedTask) -> dict[str, Any]:
        headers = dict(task.request.headers)
        headers.update({
            "X-AppEngine-QueueName": task.request.queue,
            "X-AppEngine-TaskName": task.id,
            "X-AppEngine-TaskRetryCount": str(task.retry_count),
            "X-AppEngine-TaskExecutionCount": str(task.execution_count),
            "X-AppEngine-TaskETA": str(task.request.eta.timestamp() if task.request.eta else 0.0),
        })
        if task.previous_response is not None:
            headers["X-AppEngine-TaskPreviousResponse"] = str(task.previous_response)
        return headers


@dataclasses.dataclass
class PushFailure:
    """A queued task that answered non-2xx: what to say of it, and the error behind it."""

    task_id: str
    message: str
    error: BaseException | None

    def exception(self) -> TaskFailed:
        """The :class:`core.tasks.TaskFailed` a test sees: the task's error type, message and traceback."""
        return task_failed(self.task_id, self.message, self.error)


def task_failed(task_id: str, message: str, error: BaseException | None) -> TaskFailed:
    """``core.tasks.TaskFailed`` for a drained task that failed with ``error`` (``None``: unknown)."""
    trace = "".join(traceback.format_exception(error)) if error is not None else None
    return TaskFailed(task_id, type(error).__name__ if error is not None else None, message, trace)


def push(client: Any, task: QueuedTask, outcomes: Sequence[RunOutcome], *, raise_errors: bool) -> PushFailure | None:
    """Send one queued task through the app's handler (``client``: its Flask test client).

    ``None`` when the handler answered 2xx; a 2xx with an error that is not permanent means the
    task scheduled its own next attempt. A permanent failure is raised as :class:`TaskFailed`
    with ``raise_errors``. A non-2xx counts an attempt on the task and returns a :class:`PushFailure`.
    ``outcomes`` must be an outcome listener of the app's runtime.
    """
    before = len(outcomes)
    response = client.open(task.request.path, method=task.request.method, data=task.request.body,
                           headers=InlineTransport._headers(task))
    outcome = outcomes[before] if len(outcomes) > before else None
    if 200 <= response.status_code < 300:
        if raise_errors and outcome is not None and isinstance(outcome.error, PermanentTaskFailure):
            raise task_failed(task.id, f"permanently: {outcome.message}", outcome.error) from outcome.error
        return None
    task.retry_count += 1
    task.execution_count += 1
    task.previous_response = response.status_code
    return PushFailure(task.id, f"{task.request.path} answered {response.status_code}: "
                       f"{response.get_data(as_text=True).strip()}", outcome.error if outcome is not None else None)
