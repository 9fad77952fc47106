"""``TaskHandle``: what a deferred call returns, and the caller's way to a task's fate.

A tracked task (``@callDeferred(track=True)``, a tracked queue, or ``_track=True``) has a record
the handle reads: :meth:`TaskHandle.status`, :meth:`TaskHandle.result` (waits with backoff),
:meth:`TaskHandle.cancel`. :meth:`TaskHandle.fetch` rebuilds a handle from a stored id. An
untracked task can still be cancelled while its queue holds it, if the queue can delete it.
Async code awaits :meth:`TaskHandle.result_async` instead of :meth:`TaskHandle.result`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Callable, Generator
from typing import Any

from core import db
from core.tasks import outbox, progress, records
from core.tasks.errors import TaskCancelled, TaskExpired, TaskFailed, UntrackedTask
from core.tasks.progress import Progress
from core.tasks.runtime import get_runtime
from core.tasks.transports.base import EnqueueResult, EnqueueStatus


class _Created:
    """Filled in when the queue answered the create call (after the batch or the commit)."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: EnqueueResult | None = None

    def __call__(self, result: EnqueueResult) -> None:
        self.result = result



def _polls(ended: Callable[[], tuple[bool, Any, Any]], what: str, timeout: float | None, *,
           poll: float, max_poll: float) -> Generator[float, None, Any]:
    """Call ``ended()`` (-> done, value, state) until it is done; yields each wait between the calls.

    The waits double from ``poll`` up to ``max_poll`` seconds. Returns the value; ``TimeoutError``
    naming ``what`` and its last state after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    wait = poll
    while True:
        done, value, state = ended()
        if done:
            return value
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} did not finish within {timeout} s (state {state})")
            wait = min(wait, left)
        yield wait
        wait = min(wait * 2, max_poll)


def wait_until_ended(ended: Callable[[], tuple[bool, Any, Any]], what: str, timeout: float | None, *,
                     poll: float, max_poll: float) -> Any:
    """Poll ``ended()`` until it is done (see :func:`_polls`), sleeping between the polls."""
    polls = _polls(ended, what, timeout, poll=poll, max_poll=max_poll)
    while True:
        try:
            wait = next(polls)
        except StopIteration as stop:
            return stop.value
        time.sleep(wait)


async def wait_until_ended_async(ended: Callable[[], tuple[bool, Any, Any]], what: str, timeout: float | None, *,
                                 poll: float, max_poll: float) -> Any:
    """:func:`wait_until_ended` for async code: waits with ``asyncio.sleep``, so no thread is held between polls.

    Each poll is one Datastore lookup, made on the event loop's thread (the client is synchronous).
    """
    polls = _polls(ended, what, timeout, poll=poll, max_poll=max_poll)
    while True:
        try:
            wait = next(polls)
        except StopIteration as stop:
            return stop.value
        await asyncio.sleep(wait)

#: The public name of a task's states (``handle.status().state``): the record's enum itself.
TaskStatus = records.TaskState


@dataclasses.dataclass(frozen=True)
class TaskHandle:
    """A queued task: its id (key of its record), queue, dedupe name and schedule."""

    id: str
    queue: str
    name: str | None = None
    eta: datetime.datetime | None = None
    tracked: bool = False
    #: The queue's own name of the task (to delete it), when known at the call.
    queue_task: str | None = None
    _created: _Created = dataclasses.field(default_factory=_Created, compare=False, repr=False)
    #: Takes the request back while it waits in this request's batch or open transaction.
    _ticket: outbox.Ticket = dataclasses.field(default_factory=outbox.Ticket, compare=False, repr=False)

    @property
    def task_name(self) -> str:
        return self.name or self.id

    @property
    def duplicate(self) -> bool | None:
        """``True`` when the ``_name`` was taken, so this call queued nothing; ``None`` until known.

        A call with ``_name`` outside a transaction is created at once and knows; one inside a
        transaction knows after the commit.
        """
        result = self._created.result
        return None if result is None else result.status is EnqueueStatus.DUPLICATE

    @classmethod
    def fetch(cls, task_id: str) -> TaskHandle:
        """The handle of a tracked task from its id; :class:`UntrackedTask` if it has no record."""
        record = records.TaskRecord.fetch(str(task_id)) if task_id else None
        if record is None:
            raise UntrackedTask(f"no record of task {task_id!r}: it was not tracked, expired or never existed")
        return cls(str(task_id), record.queue or "", eta=record.eta, tracked=True, queue_task=record.queue_task)

    def _record(self) -> records.TaskRecord:
        record = records.TaskRecord.fetch(self.id)
        if record is None:
            what = "expired" if self.tracked else "not tracked (defer it with _track=True or track=True)"
            raise UntrackedTask(f"task {self.id} has no record: {what}")
        return record

    def status(self) -> records.TaskRecord:
        """The task's record now: its ``state`` (a :data:`TaskStatus`), ``attempts``, times and ``error``."""
        return self._record()

    def progress(self) -> Progress | None:
        """How far the task got, as it reported with ``report_progress`` (``None``: nothing reported yet)."""
        self._record()  # an untracked or expired task says so, as status() does
        return progress.read(records.get(self.id))

    def result(self, timeout: float | None = None, *, poll: float = 0.02, max_poll: float = 1.0) -> Any:
        """Wait until the task ends and return its value.

        Raises :class:`TaskFailed` (type, message and traceback of the task's error),
        :class:`TaskCancelled`, :class:`TaskExpired`, or ``TimeoutError`` after ``timeout`` seconds
        (``None``: no limit).
        Polls the record, doubling the wait from ``poll`` up to ``max_poll`` seconds.
        """
        return wait_until_ended(self._ended, f"task {self.id}", timeout, poll=poll, max_poll=max_poll)

    async def result_async(self, timeout: float | None = None, *, poll: float = 0.02, max_poll: float = 1.0) -> Any:
        """:meth:`result` for async code: ``await handle.result_async(timeout=30)``; the same value and errors.

        Waits between polls with ``asyncio.sleep``: no thread is held while the task runs.
        """
        return await wait_until_ended_async(self._ended, f"task {self.id}", timeout, poll=poll, max_poll=max_poll)

    def _ended(self) -> tuple[bool, Any, Any]:
        """One poll of the record for :meth:`result`: (ended?, value, state); raises for an unhappy end."""
        record = self._record()
        if record.state is records.SUCCEEDED:
            return True, record.value(), record.state
        if record.state is records.FAILED:
            raise TaskFailed(self.id, record.error_type, record.error, record.traceback)
        if record.state is records.CANCELLED and record.ended_at is not None:
            raise TaskCancelled(f"task {self.id} was cancelled")
        if record.state is records.EXPIRED:
            raise TaskExpired(f"task {self.id} expired before it started; it never ran")
        return False, None, record.state

    def cancel(self) -> bool:
        """Take the task back: ``True`` if it will not run (again), ``False`` if it had ended.

        The task is deleted from its queue where the queue can; a tracked task is also revoked in
        its record, which the handler checks, so a push already under way, a scheduled one or one
        the queue can't delete ends ``cancelled`` without running. An attempt already running
        finishes, but is not retried, and its task ends ``cancelled``. Cancelled in the request (or
        transaction) that deferred it, the call is taken out before it is sent at all.
        """
        if outbox.withdraw(self._ticket):
            if self.tracked and not records.cancel(self.id)[0] and db.is_in_transaction():
                db.delete(records.record_key(self.id))  # written in this transaction (unreadable in it): never queued
            return True
        queue_task = self.queue_task
        if self.tracked:
            cancelled, record = records.cancel(self.id)
            if record is not None:
                queue_task = record.queue_task or queue_task
            if not cancelled:
                return False
        elif queue_task is None and self._created.result is not None:
            queue_task = self._created.result.queue_task_name
        deleted = False
        delete = getattr(get_runtime().transport, "delete_task", None)
        if queue_task and delete is not None:
            deleted = bool(delete(self.queue, queue_task))
        return True if self.tracked else deleted
