"""Operating the app's queues at run time: pause, resume, purge, list and run one task now.

One set of functions for the dashboard and ``flask tasks queue ...``: each checks the queue against
the app's queues (queue.yaml and the default queue) and asks the app's transport, whichever it is
(Cloud Tasks, the local queue, the in-process queue), through its
:class:`~core.tasks.transports.base.QueueControls`.
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

from core.tasks import message
from core.tasks.errors import ConfigurationError
from core.tasks.pipeline import target_of
from core.tasks.queues import QueueConfig
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import QueueControls, QueuedTaskInfo, TaskPage


@dataclasses.dataclass(frozen=True)
class QueueStatus:
    """One queue as an operator sees it."""

    name: str
    #: Paused at run time (``pause``) or by queue.yaml (``rate: 0``).
    paused: bool
    paused_by_config: bool
    rate: str
    #: Tasks waiting, where the transport can count them cheaply (the local queue), else ``None``.
    waiting: int | None = None


@dataclasses.dataclass(frozen=True)
class TaskListing:
    """A queued task with what its body says (where the queue hands the body out)."""

    task: QueuedTaskInfo
    #: The task's target (function, class or kind), when the body could be read.
    target: str | None
    task_id: str | None


def known_queue(runtime: TaskRuntime, queue: str) -> str:
    """``queue`` if the app's queue table has it, else ``UnknownQueue`` naming it and the file."""
    return runtime.queues.require(queue, "queue controls")


def controls(runtime: TaskRuntime) -> QueueControls:
    transport = runtime.transport
    if not isinstance(transport, QueueControls):
        raise ConfigurationError(f"the {runtime.settings.tasks_backend} transport has no queue controls")
    return transport


def pause(runtime: TaskRuntime, queue: str) -> None:
    controls(runtime).pause_queue(known_queue(runtime, queue))


def resume(runtime: TaskRuntime, queue: str) -> None:
    controls(runtime).resume_queue(known_queue(runtime, queue))


def purge(runtime: TaskRuntime, queue: str) -> int | None:
    """Delete every task ``queue`` holds; how many, where the queue says."""
    return controls(runtime).purge_queue(known_queue(runtime, queue))


def run_now(runtime: TaskRuntime, queue: str, name: str) -> bool:
    return controls(runtime).run_task(known_queue(runtime, queue), name)


def list_tasks(runtime: TaskRuntime, queue: str, *, limit: int = 100, cursor: str | None = None
               ) -> tuple[list[TaskListing], str | None]:
    """One page of ``queue``'s tasks with their targets, and the cursor of the next page."""
    page: TaskPage = controls(runtime).list_tasks(known_queue(runtime, queue), limit=limit, cursor=cursor)
    return [_listing(task) for task in page.tasks], page.cursor


def iter_tasks(runtime: TaskRuntime, queue: str, *, page_size: int = 500) -> Iterator[TaskListing]:
    """Every task of ``queue``, a page at a time."""
    cursor: str | None = None
    while True:
        listings, cursor = list_tasks(runtime, queue, limit=page_size, cursor=cursor)
        yield from listings
        if cursor is None:
            return


def statuses(runtime: TaskRuntime) -> list[QueueStatus]:
    """Every queue of the app, paused or not, with its waiting tasks where they can be counted."""
    configs = runtime.queues
    paused = controls(runtime).paused_queues()
    depth_of = getattr(runtime.transport, "depth", None)
    depth = depth_of() if callable(depth_of) else {}
    result = []
    for name, config in sorted(configs.items()):
        counts = depth.get(name)
        waiting = None if depth_of is None else (counts["due"] + counts["scheduled"] if counts else 0)
        result.append(QueueStatus(name, name in paused or config.paused, config.paused,
                                  _rate(config), waiting))
    return result


def _rate(config: QueueConfig) -> str:
    rate = config.rate_per_second
    return f"{rate:g}/s" if rate >= 1 or rate == 0 else f"{rate * 60:g}/m"


def _listing(task: QueuedTaskInfo) -> TaskListing:
    if task.body is None:
        return TaskListing(task, None, None)
    try:
        envelope = message.decode(task.body)
    except Exception:
        return TaskListing(task, None, None)
    return TaskListing(task, target_of(envelope), envelope.id)


def describe(listing: TaskListing) -> dict[str, object]:
    """A listing as plain values (``--json``, the dashboard's JSON)."""
    task = listing.task
    when = task.schedule_time
    return {"queue": task.queue, "name": task.name, "task_id": listing.task_id, "target": listing.target,
            "path": task.path, "state": task.state, "attempts": task.attempts, "last_status": task.last_status,
            "schedule_time": when.astimezone(datetime.UTC).isoformat() if when is not None else None}
