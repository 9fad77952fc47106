"""The SQLite file behind the local queue: every SQL statement of the queue, safe from any process.

WAL mode, so readers never block the single writer. Rows go in and out as the named rows of
:mod:`core.tasks.transports.local.rows`.
"""
from __future__ import annotations

import datetime
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from core.files import private_file
from core.tasks.queues import QueueTable, UnknownQueue
from core.tasks.transports.base import EnqueueResult, EnqueueStatus, TaskRequest
from core.tasks.transports.local.rows import (
    FAILED,
    LEASE_COLUMNS,
    LEASED,
    QUEUED,
    STATE_NAMES,
    STORED_COLUMNS,
    FailedAttempt,
    LeasedTask,
    NewTask,
    StoredTask,
    new_task,
    stored_task,
)

_SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS task (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    named INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    target_version TEXT,
    created REAL NOT NULL,
    eta REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    first_attempt REAL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    execution_count INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    deadline REAL
);
CREATE INDEX IF NOT EXISTS task_due ON task (queue, state, eta);
-- A name is taken while its task exists (ended IS NULL) and for a retention window after it ended.
CREATE TABLE IF NOT EXISTS task_name (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    ended REAL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (name TEXT PRIMARY KEY) WITHOUT ROWID;
-- Queues an operator paused at run time (version 3): kept across dispatcher restarts.
CREATE TABLE IF NOT EXISTS queue_paused (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""
#: A version-1 file lacks the per-task dispatch deadline.
_MIGRATE_FROM_1 = "ALTER TABLE task ADD COLUMN deadline REAL"
_SQL_CHUNK = 500


class LocalQueueStore:
    """The SQLite file behind the local queue, safe to open from several processes and threads.

    Each thread of each process gets its own connection, opened on first use (a connection never
    crosses a ``fork``). ``name_retention`` is how long a task name stays taken after its task
    ended (Cloud Tasks: about an hour). ``synchronous="NORMAL"`` survives any process crash,
    ``SIGKILL`` included; ``"FULL"`` also survives power loss at the cost of an fsync per commit.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        name_retention: datetime.timedelta = datetime.timedelta(hours=1),
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
        queues: QueueTable | None = None,
    ) -> None:
        if synchronous not in {"NORMAL", "FULL"}:
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.name_retention = name_retention
        self.queues = queues
        self._busy_ms = int(busy_timeout * 1000)
        self._synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._schema_ready = False

    # connections

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema created) on first use."""
        if self._pid != os.getpid():
            # Inherited from the parent across fork: never touch those handles, start afresh.
            self._pid = os.getpid()
            self._local = threading.local()
            self._connections = []
            self._schema_ready = False
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        private_file(self.path)  # it holds signed task bodies; SQLite gives -wal and -shm the same mode
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        if not self._schema_ready:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            with self._write(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < _SCHEMA_VERSION:
                    for statement in _SCHEMA.split(";"):  # executescript would COMMIT early
                        if statement.strip():
                            conn.execute(statement)
                    if version == 1:
                        conn.execute(_MIGRATE_FROM_1)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._schema_ready = True
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE so waiting for the lock happens up front."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, ...)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection inside one write transaction."""
        return self._write(self.connection())

    def close_thread(self) -> None:
        """Close this thread's connection (a thread that is about to end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            self._local.conn = None
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()

    def close(self) -> None:
        """Close every connection this store opened in this process; a later call reopens."""
        with self._lock:
            connections, self._connections = self._connections, []
        if self._pid == os.getpid():
            for conn in connections:
                conn.close()
        self._local = threading.local()

    # enqueueing

    def add(self, requests: Sequence[TaskRequest], *, now: float | None = None) -> list[EnqueueResult]:
        """Insert valid requests in one transaction; bad ones come back ``FAILED``, taken names
        ``DUPLICATE``. Raises only if the transaction itself fails."""
        now = time.time() if now is None else now
        results: list[EnqueueResult] = []
        rows: dict[int, NewTask] = {}
        # Unnamed tasks get random 63-bit numeric names, like Cloud Tasks' generated IDs.
        auto_names = struct.unpack(f"{len(requests)}Q", os.urandom(8 * len(requests)))
        for index, request in enumerate(requests):
            try:
                if self.queues is not None and request.queue not in self.queues:
                    self.queues.require(request.queue, f"task for {request.path}")  # raises, naming the queue
                row = new_task(request, now, str(auto_names[index] >> 1))
            except (ValueError, UnknownQueue) as exc:
                results.append(EnqueueResult(EnqueueStatus.FAILED, error=exc))
                continue
            rows[index] = row
            results.append(EnqueueResult(EnqueueStatus.CREATED, queue_task_name=row.name))
        if not rows:
            return results
        conn = self.connection()
        with self._write(conn):
            released_before = now - self.name_retention.total_seconds()
            for index in [i for i, row in rows.items() if row.named]:
                queue, name = rows[index].queue, rows[index].name
                # Taken while its task exists (ended IS NULL) and for the retention window after.
                cursor = conn.execute(
                    "INSERT INTO task_name (queue, name, ended) VALUES (?, ?, NULL) "
                    "ON CONFLICT (queue, name) DO UPDATE SET ended = NULL "
                    "WHERE task_name.ended IS NOT NULL AND task_name.ended <= ?",
                    (queue, name, released_before),
                )
                if cursor.rowcount == 0:
                    del rows[index]
                    results[index] = EnqueueResult(EnqueueStatus.DUPLICATE, queue_task_name=name)
            conn.executemany(
                "INSERT INTO task (queue, name, named, method, path, headers, body, target_version, "
                "created, eta, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.values(),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO queue (name) VALUES (?)", [(q,) for q in {row.queue for row in rows.values()}]
            )
        return results

    # dispatching (used by the dispatcher's thread)

    def data_version(self) -> int:
        """Changes whenever another connection commits: the dispatcher's cheap "anything new?"."""
        return int(self.connection().execute("PRAGMA data_version").fetchone()[0])

    def queue_names(self) -> list[str]:
        return [row[0] for row in self.connection().execute("SELECT name FROM queue")]

    def reclaim_leases(self) -> int:
        """Return every leased task to the queue (only safe while holding the dispatcher lock)."""
        conn = self.connection()
        with self._write(conn):
            return conn.execute("UPDATE task SET state = ? WHERE state = ?", (QUEUED, LEASED)).rowcount

    def lease_due(self, queue: str, now: float, limit: int) -> list[LeasedTask]:
        """Mark up to ``limit`` due tasks of ``queue`` leased and return them, oldest ETA first."""
        conn = self.connection()
        with self._write(conn):
            rows = conn.execute(
                f"UPDATE task SET state = {LEASED} WHERE id IN (SELECT id FROM task WHERE queue = ? "
                f"AND state = {QUEUED} AND eta <= ? ORDER BY eta LIMIT ?) RETURNING {LEASE_COLUMNS}",
                (queue, now, limit),
            ).fetchall()
        tasks = [LeasedTask._make(row) for row in rows]
        tasks.sort(key=lambda task: task.eta)
        return tasks

    def next_eta(self, queue: str) -> float | None:
        """The earliest ETA of a queued task of ``queue``."""
        row = self.connection().execute(
            f"SELECT min(eta) FROM task WHERE queue = ? AND state = {QUEUED}", (queue,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def release(self, task_ids: Collection[int]) -> None:
        """Give leased tasks back unchanged (a dispatcher stopping before pushing them)."""
        conn = self.connection()
        ids = list(task_ids)
        with self._write(conn):
            for chunk in _chunks(ids):
                conn.execute(
                    f"UPDATE task SET state = {QUEUED} WHERE state = {LEASED} AND id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                )

    def record(
        self,
        done: Sequence[int],
        ended: Sequence[tuple[str, str]],
        again: Sequence[FailedAttempt],
        *,
        now: float | None = None,
    ) -> None:
        """Write a batch of attempt outcomes in one transaction.

        ``done``: ids of tasks that succeeded; ``ended``: their ``(queue, name)`` if named;
        ``again``: tasks to retry (state queued) or to keep as failed.
        """
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            for chunk in _chunks(list(done)):
                conn.execute(f"DELETE FROM task WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            if ended:
                conn.executemany(
                    "UPDATE task_name SET ended = ? WHERE queue = ? AND name = ?",
                    [(now, queue, name) for queue, name in ended],
                )
            if again:
                conn.executemany(
                    "UPDATE task SET state = ?, eta = ?, retry_count = retry_count + 1, "
                    "execution_count = execution_count + ?, first_attempt = coalesce(first_attempt, ?), "
                    "last_status = ?, last_error = ? WHERE id = ?",
                    again,
                )

    def delete_queued(self, queue: str, name: str, *, now: float | None = None) -> bool:
        """Drop a task that waits in ``queue`` (not one being pushed); its name stays taken a while."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            rows = conn.execute(
                f"DELETE FROM task WHERE queue = ? AND name = ? AND state = {QUEUED} RETURNING named",
                (queue, name),
            ).fetchall()
            if any(named for (named,) in rows):
                conn.execute("UPDATE task_name SET ended = ? WHERE queue = ? AND name = ?", (now, queue, name))
        return bool(rows)

    def purge_names(self, *, now: float | None = None) -> int:
        """Forget task names whose retention window is over."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return conn.execute(
                "DELETE FROM task_name WHERE ended IS NOT NULL AND ended <= ?",
                (now - self.name_retention.total_seconds(),),
            ).rowcount

    # inspection and maintenance

    def pending(self, queue: str | None = None) -> int:
        """Tasks not yet done and not failed (queued or being pushed)."""
        sql = f"SELECT count(*) FROM task WHERE state IN ({QUEUED}, {LEASED})"
        args: tuple[str, ...] = ()
        if queue is not None:
            sql, args = sql + " AND queue = ?", (queue,)
        return int(self.connection().execute(sql, args).fetchone()[0])

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: how many tasks are ``queued``, ``leased`` and ``failed``."""
        result: dict[str, dict[str, int]] = {}
        for queue, state, count in self.connection().execute(
            "SELECT queue, state, count(*) FROM task GROUP BY queue, state"
        ):
            result.setdefault(queue, {"queued": 0, "leased": 0, "failed": 0})[STATE_NAMES[state]] = count
        return result

    def depth(self, *, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per known queue (empty ones too): tasks ``due`` now, ``scheduled`` later, ``leased``, ``failed``."""
        now = time.time() if now is None else now
        result = {name: {"due": 0, "scheduled": 0, "leased": 0, "failed": 0} for name in self.queue_names()}
        for queue, bucket, count in self.connection().execute(
            f"SELECT queue, CASE WHEN state = {QUEUED} AND eta <= ? THEN 'due' WHEN state = {QUEUED} "
            f"THEN 'scheduled' WHEN state = {LEASED} THEN 'leased' ELSE 'failed' END AS bucket, count(*) "
            "FROM task GROUP BY queue, bucket", (now,)
        ):
            result.setdefault(queue, {"due": 0, "scheduled": 0, "leased": 0, "failed": 0})[bucket] = count
        return result

    def tasks(self, queue: str | None = None, *, state: str | None = None, limit: int = 100) -> list[StoredTask]:
        """Tasks by ETA, optionally of one queue and one state (``queued``, ``leased``, ``failed``)."""
        clauses: list[str] = []
        args: list[str | int] = []
        if queue is not None:
            clauses.append("queue = ?")
            args.append(queue)
        if state is not None:
            codes = {v: k for k, v in STATE_NAMES.items()}
            if state not in codes:
                raise ValueError(f"unknown task state {state!r}")
            clauses.append("state = ?")
            args.append(codes[state])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.connection().execute(
            f"SELECT {STORED_COLUMNS} FROM task {where} ORDER BY eta, id LIMIT ?", (*args, limit)
        ).fetchall()
        return [stored_task(row) for row in rows]

    def failed(self, queue: str | None = None, *, limit: int = 100) -> list[StoredTask]:
        """Tasks that ran out of retries; kept until requeued or deleted."""
        return self.tasks(queue, state="failed", limit=limit)

    def requeue_failed(self, task_ids: Collection[int], *, now: float | None = None) -> int:
        """Give failed tasks a fresh start (counters reset), due now."""
        now = time.time() if now is None else now
        conn = self.connection()
        changed = 0
        with self._write(conn):
            for chunk in _chunks(list(task_ids)):
                changed += conn.execute(
                    f"UPDATE task SET state = {QUEUED}, eta = ?, retry_count = 0, execution_count = 0, "
                    f"first_attempt = NULL WHERE state = {FAILED} AND id IN ({','.join('?' * len(chunk))})",
                    (now, *chunk),
                ).rowcount
        return changed

    def delete_failed(self, task_ids: Collection[int], *, now: float | None = None) -> int:
        """Drop failed tasks; their names stay taken for the retention window, as after success."""
        now = time.time() if now is None else now
        conn = self.connection()
        deleted = 0
        with self._write(conn):
            for chunk in _chunks(list(task_ids)):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"DELETE FROM task WHERE state = {FAILED} AND id IN ({marks}) RETURNING queue, name, named",
                    chunk,
                ).fetchall()
                deleted += len(rows)
                conn.executemany(
                    "UPDATE task_name SET ended = ? WHERE queue = ? AND name = ?",
                    [(now, queue, name) for queue, name, named in rows if named],
                )
        return deleted


def _chunks(items: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start : start + _SQL_CHUNK]

