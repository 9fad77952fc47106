"""The transports a task request leaves the app through: Cloud Tasks, the local queue, the in-process queue.

Each is imported on first use (``transports.CloudTasksTransport``), so an app loads only the one its
settings choose: a production app never loads the local queue or the test queue, a local one never
loads the Cloud Tasks client.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS = {
    "CloudTasksTransport": "core.tasks.transports.cloudtasks", "sync_queues": "core.tasks.transports.cloudtasks",
    "queue_path": "core.tasks.transports.cloudtasks",
    "LocalTransport": "core.tasks.transports.local.transport", "LocalQueueStore": "core.tasks.transports.local.store",
    "InlineTransport": "core.tasks.transports.inline",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy.exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from core.tasks.transports.cloudtasks import CloudTasksTransport, queue_path, sync_queues
    from core.tasks.transports.inline import InlineTransport
    from core.tasks.transports.local.store import LocalQueueStore
    from core.tasks.transports.local.transport import LocalTransport
