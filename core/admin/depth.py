"""How many tasks wait in each queue of the local queue (its SQLite store, read-only).

Only the local backend can say: Cloud Tasks has no cheap count per queue, and the inline queue
lives in one process. Other backends get ``None`` and the page shows nothing.
"""
from __future__ import annotations

from typing import Any

from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import CountingTransport


def local_queue_depth(runtime: TaskRuntime) -> list[dict[str, Any]] | None:
    """Per queue, by name: tasks due, scheduled for later, being pushed, and failed."""
    if runtime.settings.tasks_backend != "local":
        return None
    transport = runtime.transport
    if not isinstance(transport, CountingTransport):
        return None
    return [{"queue": name, **counts} for name, counts in sorted(transport.depth().items())]
