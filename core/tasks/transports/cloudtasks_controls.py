"""Queue controls on Cloud Tasks: ``PauseQueue``, ``ResumeQueue``, ``PurgeQueue``, ``ListTasks``, ``RunTask``.

A mixin of :class:`~core.tasks.transports.cloudtasks.CloudTasksTransport` (its ``client``,
``settings`` and ``timeout``); an API refusal becomes a ``ConfigurationError`` naming the call.
A pause holds in Cloud Tasks until resumed, but ``flask tasks sync-queues`` sets every queue's
state from queue.yaml again (``rate: 0`` paused, any other rate running).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as api_exceptions
from google.cloud import tasks_v2

from core.tasks.google_admin import ADMIN_WAIT_SECONDS, admin_calls, bounded
from core.tasks.transports.base import QueuedTaskInfo, TaskPage

if TYPE_CHECKING:
    from core.config import Settings


class CloudTasksQueueControls:
    """The :class:`~core.tasks.transports.base.QueueControls` of Cloud Tasks queues."""

    settings: Settings
    timeout: float
    client: Any

    def _queue(self, queue: str) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.tasks_region}/queues/{queue}"

    def _bounded(self) -> dict[str, Any]:
        return bounded(min(self.timeout, ADMIN_WAIT_SECONDS))

    def pause_queue(self, queue: str) -> None:
        with admin_calls("Cloud Tasks", self.client, f"pausing queue {queue}", close=False):
            self.client.pause_queue(name=self._queue(queue), **self._bounded())

    def resume_queue(self, queue: str) -> None:
        with admin_calls("Cloud Tasks", self.client, f"resuming queue {queue}", close=False):
            self.client.resume_queue(name=self._queue(queue), **self._bounded())

    def paused_queues(self) -> set[str]:
        parent = f"projects/{self.settings.project}/locations/{self.settings.tasks_region}"
        with admin_calls("Cloud Tasks", self.client, "listing queues", close=False):
            return {queue.name.rsplit("/", 1)[-1]
                    for queue in self.client.list_queues(parent=parent, **self._bounded())
                    if queue.state == tasks_v2.Queue.State.PAUSED}

    def purge_queue(self, queue: str) -> int | None:
        """``PurgeQueue``: Cloud Tasks deletes the tasks in the background and does not say how many."""
        with admin_calls("Cloud Tasks", self.client, f"purging queue {queue}", close=False):
            self.client.purge_queue(name=self._queue(queue), **self._bounded())
        return None

    def list_tasks(self, queue: str, *, limit: int = 100, cursor: str | None = None) -> TaskPage:
        request = tasks_v2.ListTasksRequest(parent=self._queue(queue), page_size=limit, page_token=cursor or "",
                                            response_view=tasks_v2.Task.View.BASIC)
        with admin_calls("Cloud Tasks", self.client, f"listing the tasks of queue {queue}", close=False):
            # One page only: the pager would fetch the next ones as it is iterated.
            response = next(iter(self.client.list_tasks(request=request, **self._bounded()).pages))
        tasks = [QueuedTaskInfo(queue=queue, name=task.name.rsplit("/", 1)[-1], path=_path_of(task),
                                schedule_time=task.schedule_time if task.schedule_time else None,
                                attempts=task.dispatch_count,
                                last_status=task.last_attempt.response_status.code or None
                                if task.last_attempt else None)
                 for task in response.tasks]
        return TaskPage(tasks, response.next_page_token or None)

    def run_task(self, queue: str, name: str) -> bool:
        with admin_calls("Cloud Tasks", self.client, f"running task {name} of queue {queue}", close=False):
            try:
                self.client.run_task(name=f"{self._queue(queue)}/tasks/{name}", **self._bounded())
            except api_exceptions.NotFound:
                return False
        return True


def _path_of(task: Any) -> str:
    if task.app_engine_http_request and task.app_engine_http_request.relative_uri:
        return str(task.app_engine_http_request.relative_uri)
    url = str(task.http_request.url) if task.http_request else ""
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1] if url else ""
