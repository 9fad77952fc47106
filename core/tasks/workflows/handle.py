"""Handles of groups and chains: progress now, and the result when they end.

``GroupHandle(id).status()`` reads the root and the group's shards (one batch get);
``ChainHandle(id).status()`` the root. ``result(timeout=)`` waits like ``TaskHandle.result``
(``await result_async(timeout=)`` in async code):
a group's is its callback's result (the members' results without a callback), a chain's is
its last step's. A workflow that failed raises :class:`WorkflowFailed`.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime
from typing import Any

from core import db
from core.tasks import records
from core.tasks.errors import TaskError, UntrackedTask
from core.tasks.task_handle import wait_until_ended, wait_until_ended_async
from core.tasks.workflows import store


class WorkflowFailed(TaskError):
    """``result()`` of a group or chain that failed (``error`` says which member or step)."""

    def __init__(self, workflow_id: str, error: str | None) -> None:
        self.workflow_id, self.error = workflow_id, error
        super().__init__(f"workflow {workflow_id} failed: {error or 'unknown error'}")


@dataclasses.dataclass(frozen=True)
class WorkflowStatus:
    """A group's or chain's progress: members (steps) ``done`` and ``failed`` of ``total``."""

    id: str
    kind: str
    state: str
    done: int
    failed: int
    total: int
    label: str = ""
    created: datetime.datetime | None = None
    ended: datetime.datetime | None = None
    error: str | None = None
    #: A failed chain's step.
    failed_step: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in store.ENDED_STATES

    @property
    def percent(self) -> float:
        return 100.0 * (self.done + self.failed) / self.total if self.total else 100.0


def status_of(root: db.Entity) -> WorkflowStatus:
    done, failed = store.progress(root)
    return WorkflowStatus(id=str(root.key.name), kind=str(root.get("kind")), state=str(root.get("state")),
                          done=done, failed=failed, total=int(root.get("total") or 0), label=str(root.get("label")),
                          created=root.get("created"), ended=root.get("ended"), error=root.get("error"),
                          failed_step=root.get("failed_step"))


@dataclasses.dataclass(frozen=True)
class _Handle(abc.ABC):
    """What group and chain handles share: the root record, status and waiting for the end."""

    id: str

    def _root(self) -> db.Entity:
        root = db.get(store.root_key(self.id))
        if root is None:
            raise UntrackedTask(f"no workflow {self.id!r}")
        return root

    def status(self) -> WorkflowStatus:
        return status_of(self._root())

    def result(self, timeout: float | None = None, *, poll: float = 0.02, max_poll: float = 1.0) -> Any:
        """Wait until the workflow ends and return its result (:class:`WorkflowFailed` if it failed)."""
        return wait_until_ended(self._ended, f"workflow {self.id}", timeout, poll=poll, max_poll=max_poll)

    async def result_async(self, timeout: float | None = None, *, poll: float = 0.02, max_poll: float = 1.0) -> Any:
        """:meth:`result` for async code, waiting with ``asyncio.sleep``; the same value and errors."""
        return await wait_until_ended_async(self._ended, f"workflow {self.id}", timeout, poll=poll,
                                            max_poll=max_poll)

    def _ended(self) -> tuple[bool, Any, Any]:
        root = self._root()
        state = root.get("state")
        if state == store.SUCCEEDED:
            return True, self._value(root), state
        if state == store.FAILED:
            raise WorkflowFailed(self.id, root.get("error"))
        return False, None, state

    @abc.abstractmethod
    def _value(self, root: db.Entity) -> Any:
        """The result of a workflow that succeeded, read from its root record."""


class GroupHandle(_Handle):
    """A started group."""

    def _value(self, root: db.Entity) -> Any:
        task_id = root.get("callback_task")
        if task_id is not None:
            record = records.TaskRecord.fetch(str(task_id))
            return record.value() if record is not None else None
        return [records.decode_result(m.get("result")) if m is not None else None
                for m in store.members(self.id, int(root["total"]))]


class ChainHandle(_Handle):
    """A started chain."""

    def _value(self, root: db.Entity) -> Any:
        return records.decode_result(root.get("result"))
