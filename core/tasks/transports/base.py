"""The transport interface: how a finished task request reaches a queue.

A transport only moves bytes. It never decodes a payload, never imports Flask and never builds a
network client before its first use. Three implementations exist: Cloud Tasks (production), the
durable local queue (one machine) and the in-process queue (tests).
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

#: Cloud Tasks task IDs: letters, digits, hyphens and underscores, at most 500 characters.
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
#: Cloud Tasks queue IDs.
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
#: Cloud Tasks refuses schedule times further ahead than this.
MAX_SCHEDULE_AHEAD = datetime.timedelta(days=30)


def hashed_task_name(material: str, suffix: str = "", *, prefix: str = "", digits: int = 32) -> str:
    """A task name led by a SHA-256 digest of ``material``: the same material gives the same name
    (so the queue refuses a duplicate), and hashed names are what Cloud Tasks spreads best."""
    return f"{prefix}{hashlib.sha256(material.encode()).hexdigest()[:digits]}{suffix}"


@dataclasses.dataclass(frozen=True)
class TaskRequest:
    """One HTTP request a queue must deliver to the app.

    ``path`` is relative to the app (``/_tasks/deferred``); ``eta`` is timezone-aware UTC or
    ``None`` for "now"; ``name`` asks the queue to refuse a second task with the same name.
    """

    queue: str
    path: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    name: str | None = None
    eta: datetime.datetime | None = None
    target_version: str | None = None
    method: str = "POST"
    #: How long the queue waits for the app's answer to one push (``None``: the queue's own).
    dispatch_deadline: datetime.timedelta | None = None

    def __post_init__(self) -> None:
        if not QUEUE_NAME_RE.match(self.queue):
            raise ValueError(f"invalid queue name {self.queue!r}: use letters, digits and hyphens")
        if self.name is not None and not TASK_NAME_RE.match(self.name):
            raise ValueError(f"invalid task name {self.name!r}: use [A-Za-z0-9_-], at most 500 characters")
        if self.eta is not None and self.eta.tzinfo is None:
            raise ValueError("TaskRequest.eta must be timezone-aware")
        if not self.path.startswith("/"):
            raise ValueError(f"task path must start with '/': {self.path!r}")
        if self.dispatch_deadline is not None and self.dispatch_deadline <= datetime.timedelta(0):
            raise ValueError("TaskRequest.dispatch_deadline must be positive")


class EnqueueStatus(enum.Enum):
    CREATED = "created"
    #: A task of that name exists or existed recently: the request is already queued.
    DUPLICATE = "duplicate"
    #: The queue could not be reached or refused the request; the caller must keep it for retry.
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class EnqueueResult:
    status: EnqueueStatus
    #: The queue's name for the task (Cloud Tasks: the full resource path), if known.
    queue_task_name: str | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status is not EnqueueStatus.FAILED


@runtime_checkable
class Transport(Protocol):
    """Delivers task requests to a queue."""

    def enqueue_many(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        """Create every request, concurrently where the queue allows it.

        Returns one result per request, in order. Never raises for a single failed request: that
        request's result is ``FAILED`` with the error, so the caller can keep it for retry.
        """
        ...

    def close(self) -> None:
        """Release clients, threads and connections."""
        ...


@runtime_checkable
class DeletingTransport(Transport, Protocol):
    """A transport that can also take a task back from its queue (optional)."""

    def delete_task(self, queue: str, name: str) -> bool:
        """Delete the task the queue knows as ``name``; ``False`` if it is gone or can't be deleted."""
        ...


@runtime_checkable
class CountingTransport(Transport, Protocol):
    """A transport that can say cheaply what each of its queues holds (optional)."""

    def depth(self) -> dict[str, dict[str, int]]:
        """Per queue, by name: tasks due, scheduled for later, being pushed, and failed."""
        ...


@dataclasses.dataclass(frozen=True)
class QueuedTaskInfo:
    """One task a queue holds, as its queue controls list it."""

    queue: str
    #: The queue's name for the task (what ``run_task`` and ``delete_task`` take).
    name: str
    path: str
    #: When the queue will push it next (timezone-aware UTC).
    schedule_time: datetime.datetime | None
    #: Pushes made so far (``X-AppEngine-TaskRetryCount`` of the next one).
    attempts: int
    #: ``queued``, ``pushing`` or ``failed`` (the local queue keeps tasks that ran out of retries).
    state: str = "queued"
    #: The request body where the queue hands it out (the local and in-process queues), else ``None``.
    body: bytes | None = None
    last_status: int | None = None


@dataclasses.dataclass(frozen=True)
class TaskPage:
    """One page of a queue's tasks; ``cursor`` fetches the next one (``None``: this was the last)."""

    tasks: list[QueuedTaskInfo]
    cursor: str | None = None


@runtime_checkable
class QueueControls(Protocol):
    """What an operator does to a queue at run time, as Cloud Tasks' API offers it.

    Every transport implements it: Cloud Tasks through ``PauseQueue``/``ResumeQueue``/``PurgeQueue``/
    ``ListTasks``/``RunTask``, the local queue in its SQLite file (a pause survives restarts), the
    in-process queue in memory.
    """

    def pause_queue(self, queue: str) -> None:
        """Stop pushing ``queue``'s tasks; they stay queued and new ones are still accepted."""
        ...

    def resume_queue(self, queue: str) -> None:
        """Push ``queue``'s tasks again."""
        ...

    def paused_queues(self) -> set[str]:
        """The queues paused at run time (queue.yaml's ``rate: 0`` aside)."""
        ...

    def purge_queue(self, queue: str) -> int | None:
        """Delete every task ``queue`` holds; how many (``None`` where the queue does not say)."""
        ...

    def list_tasks(self, queue: str, *, limit: int = 100, cursor: str | None = None) -> TaskPage:
        """The tasks of ``queue`` by schedule time, a page at a time."""
        ...

    def run_task(self, queue: str, name: str) -> bool:
        """Push one queued task now, whatever its schedule time; ``False`` if it is not there."""
        ...
