"""What became of one request to ``/_tasks/*``: the one :class:`Outcome` of the task layer.

A low room of its own so that hooks, the runtime's listeners, transports and the test queue can
name it without importing the pipeline or the executor that produce it.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core import db
    from core.tasks.auth.queue_headers import TaskInfo


@dataclasses.dataclass
class Outcome:
    """What became of one request to ``/_tasks/*`` (a task push or a cron ping)."""

    status: int
    message: str
    task_id: str | None = None
    kind: str | None = None
    target: str | None = None
    error: BaseException | None = None
    info: TaskInfo | None = None
    #: Key of the dead letter recorded for a permanent failure.
    dead_letter: db.Key | None = None
    #: Why the task was answered without running (it ended before, was cancelled, runs elsewhere).
    skipped: str | None = None
    #: What the run reports as its answer's JSON body (a cron ping's report), else ``None``.
    data: dict[str, Any] | None = None
    #: Seconds from the request's arrival in the pipeline to its outcome.
    duration: float | None = None

    @property
    def ran(self) -> bool:
        return self.target is not None and self.status < 300 and self.error is None and self.skipped is None
