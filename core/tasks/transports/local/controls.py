"""Queue controls of the local queue: pause, resume, purge, list and run-now, in its SQLite file.

A pause is a row of ``queue_paused``, so it holds for every dispatcher that opens the file, across
restarts, until resumed; a paused queue keeps its tasks and accepts new ones, as in Cloud Tasks.
Every change commits to the file, which the dispatcher watches (``PRAGMA data_version``) and is
woken for: it stops or starts pushing within one turn of its loop.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from core.tasks.transports.base import QueuedTaskInfo, TaskPage
from core.tasks.transports.local.policy import QueueState
from core.tasks.transports.local.rows import FAILED, LEASED, QUEUED, STORED_COLUMNS, stored_task
from core.tasks.transports.local.store import LocalQueueStore

log = logging.getLogger(__name__)

_STATES = {"queued": "queued", "leased": "pushing", "failed": "failed"}


def paused_queues(store: LocalQueueStore) -> set[str]:
    return {row[0] for row in store.connection().execute("SELECT name FROM queue_paused")}


def take_up_pauses(store: LocalQueueStore, queues: Mapping[str, QueueState], before: set[str]) -> set[str]:
    """The dispatcher's view of pauses, read anew: rows it leased ahead for a queue now paused go
    back unpushed, and a queue paused or resumed is looked at again. Returns the paused queues."""
    paused = paused_queues(store)
    for name in paused - before:
        q = queues.get(name)
        if q is not None and q.buffer:
            store.release([task.id for task in q.buffer])
            q.buffer.clear()
        if q is not None:
            q.empty_version = -1
        log.info("queue %s is paused: its tasks wait until it is resumed", name)
    for name in before - paused:
        q = queues.get(name)
        if q is not None:
            q.empty_version = -1
        log.info("queue %s is resumed", name)
    return paused


class LocalQueueControls:
    """The :class:`~core.tasks.transports.base.QueueControls` of one local queue file.

    ``wake`` tells a running dispatcher to look at the file now (the transport's wakeup socket).
    """

    def __init__(self, store: LocalQueueStore, wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self._wake = wake

    def pause_queue(self, queue: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO queue_paused (name) VALUES (?)", (queue,))
            conn.execute("INSERT OR IGNORE INTO queue (name) VALUES (?)", (queue,))
        self._wake()

    def resume_queue(self, queue: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM queue_paused WHERE name = ?", (queue,))
        self._wake()

    def paused_queues(self) -> set[str]:
        return paused_queues(self.store)

    def purge_queue(self, queue: str, *, now: float | None = None) -> int:
        """Delete the queue's waiting and failed tasks; a push under way finishes (as in Cloud Tasks).

        Names of purged named tasks stay taken for the retention window, as after any other end.
        """
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            rows = conn.execute(
                f"DELETE FROM task WHERE queue = ? AND state IN ({QUEUED}, {FAILED}) RETURNING name, named",
                (queue,),
            ).fetchall()
            conn.executemany("UPDATE task_name SET ended = ? WHERE queue = ? AND name = ?",
                             [(now, queue, name) for name, named in rows if named])
        self._wake()
        return len(rows)

    def list_tasks(self, queue: str, *, limit: int = 100, cursor: str | None = None) -> TaskPage:
        """By schedule time then insertion; ``cursor`` is the ``eta:id`` of the last task seen."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after_eta, after_id = _parse_cursor(cursor)
        rows = self.store.connection().execute(
            f"SELECT {STORED_COLUMNS} FROM task WHERE queue = ? AND (eta > ? OR (eta = ? AND id > ?)) "
            "ORDER BY eta, id LIMIT ?", (queue, after_eta, after_eta, after_id, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        stored = [stored_task(row) for row in rows[:limit]]
        tasks = [QueuedTaskInfo(queue=t.queue, name=t.name, path=t.path, schedule_time=t.eta,
                                attempts=t.retry_count, state=_STATES[t.state], body=t.body,
                                last_status=t.last_status) for t in stored]
        last = rows[limit - 1] if more else None
        return TaskPage(tasks, f"{last[10]!r}:{last[0]}" if last is not None else None)

    def run_task(self, queue: str, name: str, *, now: float | None = None) -> bool:
        """Make a waiting (or failed) task due now, with its counters as they are."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            changed = conn.execute(
                f"UPDATE task SET eta = ?, state = {QUEUED} WHERE queue = ? AND name = ? AND state != {LEASED}",
                (now, queue, name),
            ).rowcount
        if changed:
            self._wake()
        return bool(changed)


def _parse_cursor(cursor: str | None) -> tuple[float, int]:
    if not cursor:
        return float("-inf"), -1
    eta, sep, task_id = cursor.rpartition(":")
    try:
        if not sep:
            raise ValueError(cursor)
        return float(eta), int(task_id)
    except ValueError:
        raise ValueError(f"not a cursor of this queue's listing: {cursor!r}") from None
