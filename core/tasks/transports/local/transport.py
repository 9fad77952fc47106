"""The :class:`~core.tasks.transports.base.Transport` the app's workers use for the local queue."""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Sequence

from core.tasks.queues import QueueConfig, QueueTable
from core.tasks.transports.base import EnqueueResult, EnqueueStatus, TaskRequest
from core.tasks.transports.local.controls import LocalQueueControls
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.wake import WakeSender

log = logging.getLogger(__name__)


class LocalTransport(LocalQueueControls):
    """Enqueues into a :class:`LocalQueueStore`: every request of a call in one transaction,
    then one datagram wakes the dispatcher. Its queue controls are the file's (pause, purge, ...).

    The store refuses queues missing from its table (``queues`` names them, for a store without one).
    """

    #: A whole batch is one local transaction: the dispatcher never routes it through the outbox.
    cheap_batches = True

    def __init__(self, store: LocalQueueStore, *, queues: Collection[str] | None = None) -> None:
        if queues is not None and store.queues is None:
            store.queues = QueueTable({name: QueueConfig(name=name) for name in queues},
                                      default=next(iter(queues), "default"))
        self._wake_sender = WakeSender(store.path)
        super().__init__(store, self._wake_sender.notify)

    def enqueue_many(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        try:
            results = self.store.add(requests)
        except (sqlite3.Error, OSError) as exc:
            return [EnqueueResult(EnqueueStatus.FAILED, error=exc) for _ in requests]
        if any(result.status is EnqueueStatus.CREATED for result in results):
            self._wake_sender.notify()  # after the commit, so the dispatcher it wakes sees the tasks
        return results

    def delete_task(self, queue: str, name: str) -> bool:
        try:
            return self.store.delete_queued(queue, name)
        except (sqlite3.Error, OSError):
            log.exception("could not delete task %s of queue %s", name, queue)
            return False

    def depth(self) -> dict[str, dict[str, int]]:
        return self.store.depth()

    def close(self) -> None:
        self._wake_sender.close()
        self.store.close()
