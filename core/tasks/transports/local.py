"""The durable local queue: Cloud Tasks' push semantics on one machine, stored in SQLite.

Three parts share one SQLite file (WAL mode, so readers never block the single writer):

* :class:`LocalQueueStore` owns every SQL statement; any process may open the file.
* :class:`LocalTransport` is the :class:`~core.tasks.transports.base.Transport` the app's workers
  use: one call, one transaction, however many tasks it carries.
* :class:`LocalDispatcher` is the one process that pushes due tasks to the app over HTTP with the
  headers App Engine's Cloud Tasks sends, retrying with the queue's backoff. Run it with
  ``python -m core.tasks.transports.local --db PATH --url URL --queue-yaml PATH`` (it stops on
  SIGTERM or SIGINT), or in-process with ``start()``/``stop()`` or ``run_until_idle()``.

The dispatcher is a single-threaded event loop over non-blocking sockets (epoll, or poll where
there is no epoll) speaking just enough HTTP/1.1, with keep-alive when the server offers it. On
the two-core machines this runs on, where the dispatcher shares the CPU with the app it pushes
to, such a loop cost clearly less per request than asyncio's transports or streams did.

Delivery is at least once. Leased tasks are marked in the file; a dispatcher holds an exclusive
lock on ``<db>.dispatcher.lock`` while it runs, so a new one knows every lease it finds is left
over from a dead one and reclaims it on start. Outcomes are written in batches at most
``flush_interval`` (50 ms) apart: a crash re-delivers the tasks whose outcome was not written.

Headers sent with every push (App Engine target semantics):

* ``X-AppEngine-QueueName``: the short queue name.
* ``X-AppEngine-TaskName``: the task's name; unnamed tasks get a random numeric one, as on
  Cloud Tasks.
* ``X-AppEngine-TaskRetryCount``: previous attempts of this task, whatever their outcome.
* ``X-AppEngine-TaskExecutionCount``: previous attempts that got an HTTP response from the app
  (Cloud Tasks: "times the task received a response"), not counting 503, which Cloud Tasks
  treats as "no instance available". Timeouts and refused connections do not count.
* ``X-AppEngine-TaskETA``: the attempt's schedule time in seconds since the epoch.
* ``X-AppEngine-TaskPreviousResponse``: the previous attempt's HTTP status, on retries that
  follow a response.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import errno
import fcntl
import logging
import math
import os
import re
import select
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from core.files import private_file
from core.tasks.errors import ConfigurationError
from core.tasks.queues import QueueConfig, backoff_delay, load_queue_config
from core.tasks.transports.base import MAX_SCHEDULE_AHEAD, EnqueueResult, EnqueueStatus, TaskRequest

log = logging.getLogger(__name__)

QUEUED, LEASED, FAILED = 0, 1, 2
_STATE_NAMES = {QUEUED: "queued", LEASED: "leased", FAILED: "failed"}
_SCHEMA_VERSION = 2
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
"""
_TASK_COLUMNS = (
    "id, queue, name, named, method, path, headers, body, target_version, created, eta, state, "
    "first_attempt, retry_count, execution_count, last_status, last_error"
)
#: A version-1 file lacks the per-task dispatch deadline.
_MIGRATE_FROM_1 = "ALTER TABLE task ADD COLUMN deadline REAL"
_LEASE_COLUMNS = (
    "id, name, named, method, path, headers, body, eta, retry_count, execution_count, first_attempt, last_status, "
    "deadline"
)
# Headers the queue sets itself; a request's own values for them are dropped, as Cloud Tasks does.
_RESERVED_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "user-agent"}
_RESERVED_PREFIXES = ("x-appengine-", "x-cloudtasks-", "x-google-")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")
_USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"
_METHODS = {"POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"}
_SQL_CHUNK = 500


# --- the store ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StoredTask:
    """A task as the store holds it, for listings and inspection."""

    id: int
    queue: str
    name: str
    named: bool
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    target_version: str | None
    created: datetime.datetime
    eta: datetime.datetime
    #: ``queued``, ``leased`` (being pushed) or ``failed`` (out of retries, kept for inspection).
    state: str
    first_attempt: datetime.datetime | None
    #: Attempts made so far: the ``X-AppEngine-TaskRetryCount`` of the next push.
    retry_count: int
    #: Attempts that got a response other than 503: the next ``X-AppEngine-TaskExecutionCount``.
    execution_count: int
    last_status: int | None
    last_error: str | None


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


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
    ) -> None:
        if synchronous not in {"NORMAL", "FULL"}:
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.name_retention = name_retention
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
        rows: dict[int, tuple[object, ...]] = {}
        # Unnamed tasks get random 63-bit numeric names, like Cloud Tasks' generated IDs.
        auto_names = struct.unpack(f"{len(requests)}Q", os.urandom(8 * len(requests)))
        for index, request in enumerate(requests):
            try:
                row = _encode_request(request, now, str(auto_names[index] >> 1))
            except ValueError as exc:
                results.append(EnqueueResult(EnqueueStatus.FAILED, error=exc))
                continue
            rows[index] = row
            results.append(EnqueueResult(EnqueueStatus.CREATED, queue_task_name=str(row[1])))
        if not rows:
            return results
        conn = self.connection()
        with self._write(conn):
            released_before = now - self.name_retention.total_seconds()
            for index in [i for i, row in rows.items() if row[2]]:
                queue, name = rows[index][0], rows[index][1]
                # Taken while its task exists (ended IS NULL) and for the retention window after.
                cursor = conn.execute(
                    "INSERT INTO task_name (queue, name, ended) VALUES (?, ?, NULL) "
                    "ON CONFLICT (queue, name) DO UPDATE SET ended = NULL "
                    "WHERE task_name.ended IS NOT NULL AND task_name.ended <= ?",
                    (queue, name, released_before),
                )
                if cursor.rowcount == 0:
                    del rows[index]
                    results[index] = EnqueueResult(EnqueueStatus.DUPLICATE, queue_task_name=str(name))
            conn.executemany(
                "INSERT INTO task (queue, name, named, method, path, headers, body, target_version, "
                "created, eta, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows.values(),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO queue (name) VALUES (?)", [(q,) for q in {row[0] for row in rows.values()}]
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

    def lease_due(self, queue: str, now: float, limit: int) -> list[tuple[object, ...]]:
        """Mark up to ``limit`` due tasks of ``queue`` leased and return them, oldest ETA first."""
        conn = self.connection()
        with self._write(conn):
            rows = conn.execute(
                f"UPDATE task SET state = {LEASED} WHERE id IN (SELECT id FROM task WHERE queue = ? "
                f"AND state = {QUEUED} AND eta <= ? ORDER BY eta LIMIT ?) RETURNING {_LEASE_COLUMNS}",
                (queue, now, limit),
            ).fetchall()
        rows.sort(key=lambda row: row[7])
        return rows

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
        again: Sequence[tuple[object, ...]],
        *,
        now: float | None = None,
    ) -> None:
        """Write a batch of attempt outcomes in one transaction.

        ``done``: ids of tasks that succeeded; ``ended``: their ``(queue, name)`` if named;
        ``again``: ``(state, eta, responded, attempt_started, status, error, id)`` of tasks to
        retry (state queued) or to keep as failed.
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
            result.setdefault(queue, {"queued": 0, "leased": 0, "failed": 0})[_STATE_NAMES[state]] = count
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
        clauses, args = [], []  # type: ignore[var-annotated]
        if queue is not None:
            clauses.append("queue = ?")
            args.append(queue)
        if state is not None:
            codes = {v: k for k, v in _STATE_NAMES.items()}
            if state not in codes:
                raise ValueError(f"unknown task state {state!r}")
            clauses.append("state = ?")
            args.append(codes[state])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.connection().execute(
            f"SELECT {_TASK_COLUMNS} FROM task {where} ORDER BY eta, id LIMIT ?", (*args, limit)
        ).fetchall()
        return [_stored_task(row) for row in rows]

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


def _encode_request(request: TaskRequest, now: float, auto_name: str) -> tuple[object, ...]:
    """A task row from a request, or ValueError for what Cloud Tasks would refuse too."""
    method = request.method.upper()
    if method not in _METHODS:
        raise ValueError(f"unsupported HTTP method {request.method!r}")
    if not _PATH_RE.match(request.path):
        raise ValueError(f"task path must be printable ASCII without spaces: {request.path!r}")
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if not _HEADER_NAME_RE.match(key):
            raise ValueError(f"invalid header name {key!r}")
        if any(c in value for c in "\r\n\0") or not value.isascii():
            raise ValueError(f"invalid value for header {key!r}")
        lower = key.lower()
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
            continue
        headers[key] = value
    if request.body and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/octet-stream"
    eta = now if request.eta is None else request.eta.timestamp()
    if eta > now + MAX_SCHEDULE_AHEAD.total_seconds():
        raise ValueError(f"schedule time more than {MAX_SCHEDULE_AHEAD.days} days ahead")
    name = request.name if request.name is not None else auto_name
    # Stored as the header lines the dispatcher sends, so pushing needs no decoding.
    header_block = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    return (
        request.queue, name, request.name is not None, method, request.path, header_block,
        bytes(request.body), request.target_version, now, eta,
        None if request.dispatch_deadline is None else request.dispatch_deadline.total_seconds(),
    )


def _stored_task(row: tuple[object, ...]) -> StoredTask:
    (task_id, queue, name, named, method, path, headers, body, target_version, created, eta, state,
     first_attempt, retry_count, execution_count, last_status, last_error) = row
    return StoredTask(
        id=int(task_id),  # type: ignore[call-overload]
        queue=str(queue), name=str(name), named=bool(named), method=str(method), path=str(path),
        headers=dict(line.split(": ", 1) for line in str(headers).split("\r\n") if line),
        body=bytes(body),  # type: ignore[call-overload]
        target_version=None if target_version is None else str(target_version),
        created=_utc(float(created)), eta=_utc(float(eta)),  # type: ignore[arg-type]
        state=_STATE_NAMES[int(state)],  # type: ignore[call-overload]
        first_attempt=None if first_attempt is None else _utc(float(first_attempt)),  # type: ignore[arg-type]
        retry_count=int(retry_count), execution_count=int(execution_count),  # type: ignore[call-overload]
        last_status=None if last_status is None else int(last_status),  # type: ignore[call-overload]
        last_error=None if last_error is None else str(last_error),
    )


# --- the transport ------------------------------------------------------------------------------

class LocalTransport:
    """Enqueues into a :class:`LocalQueueStore`: every request of a call in one transaction.

    With ``queues`` given, a request for any other queue fails like Cloud Tasks' NOT_FOUND.
    """

    #: A whole batch is one local transaction: the dispatcher never routes it through the outbox.
    cheap_batches = True

    def __init__(self, store: LocalQueueStore, *, queues: Collection[str] | None = None) -> None:
        self.store = store
        self._queues = None if queues is None else frozenset(queues)

    def enqueue_many(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        if self._queues is not None:
            unknown = [r for r in requests if r.queue not in self._queues]
            if unknown:
                return self._with_unknown(requests)
        try:
            return self.store.add(requests)
        except (sqlite3.Error, OSError) as exc:
            return [EnqueueResult(EnqueueStatus.FAILED, error=exc) for _ in requests]

    def _with_unknown(self, requests: Sequence[TaskRequest]) -> list[EnqueueResult]:
        assert self._queues is not None
        known = [r for r in requests if r.queue in self._queues]
        created = iter(self.enqueue_many(known) if known else [])
        return [
            next(created) if r.queue in self._queues
            else EnqueueResult(EnqueueStatus.FAILED, error=LookupError(f"unknown queue {r.queue!r}"))
            for r in requests
        ]

    def delete_task(self, queue: str, name: str) -> bool:
        try:
            return self.store.delete_queued(queue, name)
        except (sqlite3.Error, OSError):
            log.exception("could not delete task %s of queue %s", name, queue)
            return False

    def close(self) -> None:
        self.store.close()


# --- HTTP over non-blocking sockets ---------------------------------------------------------------

_SENDING, _RECEIVING, _IDLE = range(3)
_IN, _OUT = select.POLLIN, select.POLLOUT
_MAX_HEAD = 64 * 1024
_KEEP_BODY = 512


class _Poller:
    """Readiness of file descriptors: epoll where the OS has it, poll(2) elsewhere."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._poller = select.epoll() if self._epoll else select.poll()
        self.register = self._poller.register
        self.modify = self._poller.modify
        self.unregister = self._poller.unregister
        #: epoll forgets a descriptor when it is closed, which saves a system call per connection.
        self.forgets_closed = self._epoll

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poller.poll(timeout if self._epoll else timeout * 1000.0)

    def close(self) -> None:
        if self._epoll:
            self._poller.close()  # type: ignore[union-attr]


class _Connection:
    """One TCP connection to the app and the exchange in progress on it."""

    __slots__ = (
        "sock", "fd", "state", "mask", "reused", "task", "queue", "payload", "sent", "started", "deadline",
        "buf", "status", "head_done", "remaining", "chunked", "trailers", "until_eof", "keep_alive", "body",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _SENDING
        self.mask = 0
        self.reused = False
        self.task: tuple[object, ...] | None = None
        self.queue: _QueueState | None = None
        self.payload = b""
        self.sent = 0
        self.started = 0.0
        self.deadline = 0.0
        self.reset_response()

    def reset_response(self) -> None:
        self.buf = b""
        self.status = 0
        self.head_done = False
        self.remaining = 0
        self.chunked = False
        self.trailers = False
        self.until_eof = False
        self.keep_alive = False
        self.body = b""

    def feed(self, data: bytes, head_request: bool) -> bool:
        """Take response bytes; True once the response is complete. Raises ValueError on garbage."""
        buf = self.buf + data if self.buf else data
        self.buf = b""
        while not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError("response head too large")
                self.buf = buf
                return False
            head, buf = buf[:end].lower(), buf[end + 4 :]
            if not head.startswith(b"http/1.") or head[8:9] != b" ":
                raise ValueError("not an HTTP/1.x response")
            status = int(head[9:12])
            if status < 200:
                continue  # an interim response; the final one follows
            self.status, self.head_done = status, True
            connection = _header(head, b"connection")
            if head[7:8] == b"0":
                self.keep_alive = b"keep-alive" in connection
            else:
                self.keep_alive = b"close" not in connection
            if head_request or status in (204, 304):
                self.remaining = 0
            elif b"chunked" in _header(head, b"transfer-encoding"):
                self.chunked = True
            elif length := _header(head, b"content-length"):
                self.remaining = int(length)
            else:
                self.until_eof, self.keep_alive = True, False
        if buf and len(self.body) < _KEEP_BODY:
            self.body += buf[: _KEEP_BODY - len(self.body)]
        if self.chunked:
            return self._feed_chunks(buf)
        if self.until_eof:
            return False
        self.remaining -= len(buf)
        return self.remaining <= 0

    def _feed_chunks(self, buf: bytes) -> bool:
        # ``remaining`` counts the bytes of the current chunk's data and its closing CRLF.
        while True:
            if self.remaining:
                take = min(self.remaining, len(buf))
                buf, self.remaining = buf[take:], self.remaining - take
                if self.remaining:
                    return False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                self.buf = buf
                return False
            line, buf = buf[:line_end], buf[line_end + 2 :]
            if self.trailers:
                if not line:
                    return True
                continue
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                self.trailers = True
            else:
                self.remaining = size + 2


def _header(head: bytes, name: bytes) -> bytes:
    """A header's value in a lower-cased response head, or b""."""
    start = head.find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


# --- the dispatcher -----------------------------------------------------------------------------

class _QueueState:
    """A queue's runtime state inside the dispatcher."""

    __slots__ = (
        "config", "name", "tokens", "refilled", "inflight", "buffer", "empty_version", "next_eta",
        "deadline", "limit", "header",
    )

    def __init__(self, config: QueueConfig, rate_limits: bool) -> None:
        self.config = config
        self.name = config.name
        self.tokens = float(config.bucket_size) if rate_limits else math.inf
        self.refilled = time.monotonic()
        self.inflight = 0
        #: Leased rows waiting for a connection, a rate token or a concurrency slot.
        self.buffer: collections.deque[tuple[object, ...]] = collections.deque()
        #: The store's data version when the queue was last found without due tasks.
        self.empty_version = -1
        self.next_eta: float | None = None
        self.deadline = config.dispatch_deadline.total_seconds()
        self.limit = config.max_concurrent_requests or 1 << 30
        self.header = f"X-AppEngine-QueueName: {config.name}\r\n"

    def refill(self, mono: float) -> None:
        bucket = float(self.config.bucket_size)
        if self.tokens < bucket:
            self.tokens = min(bucket, self.tokens + (mono - self.refilled) * self.config.rate_per_second)
        self.refilled = mono


@dataclasses.dataclass
class DispatcherStats:
    """Counters since the dispatcher was created."""

    attempts: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    timeouts: int = 0
    #: TCP connections opened; fewer than attempts when the app keeps connections alive.
    connections: int = 0


class LocalDispatcher:
    """Pushes due tasks from a :class:`LocalQueueStore` to ``base_url`` the way Cloud Tasks does.

    Per queue it honours ``rate_per_second``/``bucket_size`` (a token bucket),
    ``max_concurrent_requests`` and ``dispatch_deadline`` (the HTTP timeout). Any 2xx answer
    completes a task; any other answer, a timeout or a connection error schedules a retry after
    :func:`~core.tasks.queues.backoff_delay` until the queue's retry limits are reached, and then
    the task stays in the store as ``failed``. ``max_connections`` caps open connections over all
    queues. ``rate_limits=False`` ignores rates (concurrency limits still apply), for benchmarks
    and bulk local runs. Tasks of queues missing from ``queues`` get App Engine's default settings.
    """

    def __init__(
        self,
        store: LocalQueueStore,
        base_url: str,
        queues: Mapping[str, QueueConfig],
        *,
        max_connections: int = 64,
        rate_limits: bool = True,
        poll_interval: float = 0.005,
        flush_interval: float = 0.05,
        batch_size: int = 256,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the local queue pushes to plain http:// URLs, got {base_url!r}")
        self.store = store
        self.base_url = base_url
        self.stats = DispatcherStats()
        self._host, self._port = parts.hostname, parts.port or 80
        self._host_header = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._configs = dict(queues)
        self._rate_limits = rate_limits
        self._max_connections = max(1, max_connections)
        self._poll_interval = poll_interval
        self._flush_interval = flush_interval
        self._batch = max(1, batch_size)
        self._queues: dict[str, _QueueState] = {}
        self._warned: set[str] = set()
        self._addr: tuple[object, ...] = ()
        self._family = socket.AF_INET
        self._poller: _Poller | None = None
        self._by_fd: dict[int, _Connection] = {}
        self._active: set[_Connection] = set()
        self._idle: list[_Connection] = []
        # Outcomes not yet written: ids done, names of those done, rows to retry or fail.
        self._done: list[int] = []
        self._ended: list[tuple[str, str]] = []
        self._again: list[tuple[object, ...]] = []
        self._first_outcome = 0.0
        self._version = -1
        self._checked_version = 0.0
        self._scanned_queues = 0.0
        self._scanned_deadlines = 0.0
        self._purged_names = 0.0
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Lock()
        self._stop = threading.Event()
        self._grace = 10.0
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # control

    def start(self) -> None:
        """Run in a background thread until :meth:`stop`. Raises ConfigurationError when another
        dispatcher already serves the same store."""
        self._stop.clear()
        self._open()  # in the caller, so that a busy lock raises here
        self._thread = threading.Thread(target=self._serve, args=(True,), name="local-task-dispatcher", daemon=True)
        self._thread.start()

    def request_stop(self, grace: float = 10.0) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads."""
        self._grace = max(0.0, grace)
        self._stop.set()
        self._wake()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop taking tasks, let pushes in flight finish for up to ``timeout`` seconds, then
        give back every task not pushed to completion and release the lock."""
        self.request_stop(10.0 if timeout is None else timeout)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(None if timeout is None else timeout + 10.0)

    def run_forever(self) -> None:
        """Run in the calling thread until :meth:`request_stop` (even one made just before)."""
        self._open()
        self._serve(False)

    def run_until_idle(self, timeout: float | None = None, *, wait_scheduled: bool = False) -> int:
        """Push until no task is due or in flight; return the number of attempts made.

        With ``wait_scheduled`` it also waits for tasks scheduled later (retries included), until
        only failed tasks are left. Raises TimeoutError when ``timeout`` seconds pass first.
        """
        before = self.stats.attempts
        self._stop.clear()
        self._open()
        try:
            give_up = None if timeout is None else time.monotonic() + timeout
            self._loop(idle_exit=True, wait_scheduled=wait_scheduled, give_up=give_up)
        finally:
            self._shutdown(0.0, close_connection=False)
        return self.stats.attempts - before

    def pending(self) -> int:
        """Tasks in the store not yet done and not failed."""
        return self.store.pending()

    def failed(self, queue: str | None = None, *, limit: int = 100) -> list[StoredTask]:
        """Tasks kept after running out of retries."""
        return self.store.failed(queue, limit=limit)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: tasks ``queued``, ``leased`` and ``failed`` in the store."""
        return self.store.counts()

    # lifecycle

    def _open(self) -> None:
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this dispatcher is already running")
        try:
            self._take_lock()
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            # "localhost" may resolve to ::1 first while dev servers listen on 127.0.0.1 only.
            family, _, _, _, addr = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
            self._family, self._addr = family, addr
            self._poller = _Poller()
            self._by_fd = {}
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._poller.register(self._wake_r.fileno(), _IN)
            reclaimed = self.store.reclaim_leases()
            if reclaimed:
                log.info("reclaimed %d task(s) leased by a dispatcher that did not stop cleanly", reclaimed)
            self._version = -1
            self._queues = {name: _QueueState(config, self._rate_limits) for name, config in self._configs.items()}
            self._scan_queues(time.monotonic())
        except BaseException:
            self._close_loop()
            raise

    def _take_lock(self) -> None:
        path = self.store.path.with_name(self.store.path.name + ".dispatcher.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(f"another dispatcher already serves {self.store.path.name}") from None
        self._lock_fd = fd

    def _serve(self, own_thread: bool) -> None:
        try:
            while True:
                try:
                    self._loop(idle_exit=False, wait_scheduled=False, give_up=None)
                    break
                except sqlite3.OperationalError as exc:
                    # Locked past the busy timeout, disk full, ...: keep the state, try again.
                    log.warning("the queue store failed (%s); trying again in a second", exc)
                    if self._stop.wait(1.0):
                        break
        except Exception:
            log.exception("the local task dispatcher stopped on an error")
            raise
        finally:
            self._shutdown(self._grace, close_connection=own_thread)

    def _shutdown(self, grace: float, *, close_connection: bool) -> None:
        """Let pushes in flight finish for ``grace`` seconds, then give back what is unfinished."""
        try:
            give_up = time.monotonic() + grace
            while self._active and time.monotonic() < give_up:
                self._poll(min(0.05, max(0.0, give_up - time.monotonic())))
                self._scan_deadlines(time.monotonic(), force=True)
            held: list[int] = []
            for q in self._queues.values():
                held.extend(int(row[0]) for row in q.buffer)  # type: ignore[call-overload]
                q.buffer.clear()
                q.inflight = 0
            for conn in list(self._active):
                if conn.task is not None:
                    held.append(int(conn.task[0]))  # type: ignore[call-overload]
                self._close(conn)
            for conn in self._idle:
                self._close(conn)
            self._idle = []
            self._flush()
            if held:
                self.store.release(held)
        finally:
            if close_connection:
                self.store.close_thread()
            self._close_loop()

    def _close_loop(self) -> None:
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
        self._stop.clear()
        self._running.release()

    def _wake(self) -> None:
        sock = self._wake_w
        if sock is not None:
            try:
                sock.send(b"\0")
            except OSError:
                pass

    # the loop

    def _loop(self, *, idle_exit: bool, wait_scheduled: bool, give_up: float | None) -> None:
        while not self._stop.is_set():
            mono = time.monotonic()
            if give_up is not None and mono > give_up:
                raise TimeoutError("the local queue did not become idle in time")
            now = time.time()
            # New tasks matter only while a connection is free to push them.
            if not self._active or (
                len(self._active) < self._max_connections and mono - self._checked_version >= self._poll_interval
            ):
                self._check_version(mono)
            started = self._fill(now, mono)
            unwritten = len(self._done) + len(self._again)
            if unwritten and (
                not self._active or unwritten >= self._batch or mono - self._first_outcome >= self._flush_interval
            ):
                self._flush()
                continue
            if idle_exit and not started and not self._active and self._is_idle(now, wait_scheduled):
                return
            self._poll(self._timeout(now, mono))
            mono = time.monotonic()
            self._scan_deadlines(mono)
            if mono - self._purged_names > 60.0:
                self._purged_names = mono
                self.store.purge_names()

    def _check_version(self, mono: float) -> None:
        self._checked_version = mono
        version = self.store.data_version()
        if version != self._version:
            self._version = version
            if mono - self._scanned_queues > 1.0:
                self._scan_queues(mono)

    def _scan_queues(self, mono: float) -> None:
        self._scanned_queues = mono
        for name in self.store.queue_names():
            if name not in self._queues:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("queue %r is not configured: pushing its tasks with default settings", name)
                self._queues[name] = _QueueState(QueueConfig(name=name), self._rate_limits)

    def _fill(self, now: float, mono: float) -> int:
        """Start as many pushes as the limits allow; return how many started."""
        started = 0
        for q in self._queues.values():
            if q.config.paused:
                continue
            while True:
                room = min(self._max_connections - len(self._active), q.limit - q.inflight)
                if room <= 0:
                    break
                if self._rate_limits:
                    q.refill(mono)
                    room = min(room, int(q.tokens))
                    if room <= 0:
                        break
                if not q.buffer:
                    if q.empty_version == self._version and (q.next_eta is None or q.next_eta > now):
                        break
                    want = max(room, self._batch)
                    rows = self.store.lease_due(q.name, now, want)
                    q.buffer.extend(rows)
                    if len(rows) < want:
                        q.empty_version = self._version
                        q.next_eta = self.store.next_eta(q.name)
                    if not rows:
                        break
                for _ in range(min(room, len(q.buffer))):
                    self._begin(q, q.buffer.popleft(), now)
                    started += 1
        return started

    def _is_idle(self, now: float, wait_scheduled: bool) -> bool:
        for q in self._queues.values():
            if q.config.paused:
                continue
            if q.buffer or q.empty_version != self._version:
                return False
            if q.next_eta is not None and (wait_scheduled or q.next_eta <= now):
                return False
        return not (self._done or self._again)

    def _timeout(self, now: float, mono: float) -> float:
        """How long the selector may sleep before the loop has something to do."""
        if self._active:
            timeout = 0.05  # also the resolution of dispatch deadlines
        else:
            timeout = self._poll_interval
        if self._done or self._again:
            timeout = min(timeout, self._first_outcome + self._flush_interval - mono)
        if len(self._active) < self._max_connections:
            for q in self._queues.values():
                if q.config.paused or q.inflight >= q.limit:
                    continue
                if q.buffer or (q.next_eta is not None and q.next_eta <= now):
                    if self._rate_limits and q.tokens < 1:
                        timeout = min(timeout, (1 - q.tokens) / q.config.rate_per_second)
                elif q.next_eta is not None:
                    timeout = min(timeout, q.next_eta - now)
        return max(0.0, timeout)

    # one push

    def _begin(self, q: _QueueState, task: tuple[object, ...], now: float) -> None:
        """Build the request for a leased task and start sending it."""
        _id, name, _named, method, path, headers, body, eta, retry_count, execution_count, _first, last, _dl = task
        if self._rate_limits:
            q.tokens -= 1
        parts = [
            f"{method} {self._prefix}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            f"User-Agent: {_USER_AGENT}\r\n{q.header}X-AppEngine-TaskName: {name}\r\n"
            f"X-AppEngine-TaskRetryCount: {retry_count}\r\nX-AppEngine-TaskExecutionCount: {execution_count}\r\n"
            f"X-AppEngine-TaskETA: {eta:.6f}\r\n"
        ]
        if last is not None and retry_count:
            parts.append(f"X-AppEngine-TaskPreviousResponse: {last}\r\n")
        if headers:
            parts.append(headers)  # type: ignore[arg-type]
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            parts.append(f"Content-Length: {len(body)}\r\n")  # type: ignore[arg-type]
        parts.append("\r\n")
        q.inflight += 1
        self.stats.attempts += 1
        self._send(q, task, "".join(parts).encode("latin-1") + body, now, fresh=False)  # type: ignore[operator]

    def _send(self, q: _QueueState, task: tuple[object, ...], payload: bytes, now: float, *, fresh: bool) -> None:
        conn = None if fresh or not self._idle else self._idle.pop()
        if conn is not None:
            conn.reused = True
        else:
            try:
                sock = socket.socket(self._family, socket.SOCK_STREAM)
            except OSError as exc:
                q.inflight -= 1
                self._retry_or_fail(q, task, now, f"socket: {exc.strerror or exc}", status=None, responded=False)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(self._addr)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                sock.close()
                q.inflight -= 1
                self._retry_or_fail(q, task, now, f"connect: {os.strerror(err)}", status=None, responded=False)
                return
            conn = _Connection(sock)
            conn.reused = False
            self.stats.connections += 1
        conn.task, conn.queue, conn.payload, conn.sent = task, q, payload, 0
        conn.started, conn.deadline = now, time.monotonic() + float(task[12] or q.deadline)  # type: ignore[arg-type]
        conn.state = _SENDING
        self._active.add(conn)
        # Loopback connects finish at once; sending right away saves a trip through the selector.
        self._write(conn)

    def _register(self, conn: _Connection, mask: int) -> None:
        if conn.mask != mask:
            assert self._poller is not None
            if conn.mask:
                self._poller.modify(conn.fd, mask)
            else:
                self._poller.register(conn.fd, mask)
                self._by_fd[conn.fd] = conn
            conn.mask = mask

    def _write(self, conn: _Connection) -> None:
        try:
            if conn.sent:
                sent = conn.sock.send(memoryview(conn.payload)[conn.sent :])
            else:
                sent = conn.sock.send(conn.payload)
        except (BlockingIOError, InterruptedError):
            self._register(conn, _OUT)
            return
        except OSError as exc:
            self._broken(conn, f"send: {exc.strerror or exc}")
            return
        conn.sent += sent
        if conn.sent < len(conn.payload):
            self._register(conn, _OUT)
        else:
            conn.state = _RECEIVING
            self._register(conn, _IN)

    def _poll(self, timeout: float) -> None:
        assert self._poller is not None
        by_fd = self._by_fd
        for fd, _events in self._poller.poll(timeout):
            conn = by_fd.get(fd)
            if conn is None:
                self._drain_wake()
            elif conn.state == _RECEIVING:
                self._read(conn)
            elif conn.state == _SENDING:
                self._write(conn)
            else:  # an idle kept-alive connection became readable: the server closed it
                self._idle.remove(conn)
                self._close(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r is not None and self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(conn, f"recv: {exc.strerror or exc}")
            return
        if not data:
            if conn.until_eof:
                self._answered(conn)
            else:
                self._broken(conn, "the app closed the connection before a complete response")
            return
        try:
            complete = conn.feed(data, conn.task is not None and conn.task[3] == "HEAD")
        except ValueError as exc:
            self._broken(conn, f"bad response: {exc}")
            return
        if complete:
            self._answered(conn)

    def _answered(self, conn: _Connection) -> None:
        q, task, status, started = conn.queue, conn.task, conn.status, conn.started
        assert q is not None and task is not None
        body = conn.body
        self._release(conn, keep=conn.keep_alive)
        q.inflight -= 1
        if 200 <= status < 300:
            self.stats.succeeded += 1
            if not (self._done or self._again):
                self._first_outcome = time.monotonic()
            self._done.append(task[0])  # type: ignore[arg-type]
            if task[2]:
                self._ended.append((q.name, task[1]))  # type: ignore[arg-type]
            return
        text = body.decode("utf-8", "replace").strip()
        error = f"HTTP {status}: {text[:200]}" if text else f"HTTP {status}"
        # Cloud Tasks does not count 503 (no instance available) as an execution.
        self._retry_or_fail(q, task, started, error, status=status, responded=status != 503)

    def _broken(self, conn: _Connection, error: str) -> None:
        """The connection failed before a complete response arrived."""
        q, task, payload, started = conn.queue, conn.task, conn.payload, conn.started
        assert q is not None and task is not None
        stale = conn.reused and not conn.head_done and not conn.buf
        self._release(conn, keep=False)
        if stale:
            # A kept-alive connection the server had closed meanwhile: resend on a new one.
            self._send(q, task, payload, started, fresh=True)
            return
        q.inflight -= 1
        self._retry_or_fail(q, task, started, error, status=None, responded=False)

    def _release(self, conn: _Connection, *, keep: bool) -> None:
        self._active.discard(conn)
        conn.task = conn.queue = None
        conn.payload = b""
        if keep and not self._stop.is_set() and len(self._idle) < self._max_connections:
            conn.reset_response()
            conn.state = _IDLE
            self._register(conn, _IN)
            self._idle.append(conn)
        else:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.mask and self._poller is not None:
            if not self._poller.forgets_closed:
                self._poller.unregister(conn.fd)
            del self._by_fd[conn.fd]
        conn.mask = 0
        self._active.discard(conn)
        conn.sock.close()

    def _scan_deadlines(self, mono: float, *, force: bool = False) -> None:
        if not force and mono - self._scanned_deadlines < 0.05:
            return
        self._scanned_deadlines = mono
        for conn in [c for c in self._active if c.deadline <= mono]:
            q, task, started = conn.queue, conn.task, conn.started
            assert q is not None and task is not None
            self.stats.timeouts += 1
            self._release(conn, keep=False)
            q.inflight -= 1
            error = f"no response within the dispatch deadline of {float(task[12] or q.deadline):g} s"  # type: ignore[arg-type]
            self._retry_or_fail(q, task, started, error, status=None, responded=False)

    # outcomes

    def _retry_or_fail(
        self, q: _QueueState, task: tuple[object, ...], started: float, error: str, *,
        status: int | None, responded: bool,
    ) -> None:
        """Schedule the next attempt, or keep the task as failed once its retry limits are reached."""
        attempts = int(task[8]) + 1  # type: ignore[call-overload]
        first_attempt = started if task[10] is None else float(task[10])  # type: ignore[arg-type]
        now = time.time()
        retry = q.config.retry
        reached = []
        if retry.task_retry_limit is not None:
            reached.append(attempts - 1 >= retry.task_retry_limit)
        if retry.task_age_limit is not None:
            reached.append(now - first_attempt >= retry.task_age_limit.total_seconds())
        if reached and all(reached):
            self.stats.failed += 1
            log.warning("task %s of queue %r failed after %d attempt(s): %s", task[1], q.name, attempts, error)
            state, eta = FAILED, now
        else:
            self.stats.retried += 1
            state, eta = QUEUED, now + backoff_delay(retry, attempts)
            if q.next_eta is None or eta < q.next_eta:
                q.next_eta = eta
        if not (self._done or self._again):
            self._first_outcome = time.monotonic()
        self._again.append((state, eta, int(responded), started, status, error, task[0]))

    def _flush(self) -> None:
        if self._done or self._again:
            retried = bool(self._again)
            self.store.record(self._done, self._ended, self._again)  # cleared only once written
            self._done, self._ended, self._again = [], [], []
            if retried:
                # A lease between the retry and this write may have found the queue empty; our own
                # commit leaves data_version alone, so look again for the retries just written.
                for q in self._queues.values():
                    q.empty_version = -1


# --- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run a dispatcher in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m core.tasks.transports.local",
        description="Push the tasks of a local queue file to an app over HTTP, the way Cloud Tasks does.",
    )
    parser.add_argument("--db", required=True, type=Path, help="the queue's SQLite file")
    parser.add_argument("--url", required=True, help="the app's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--queue-yaml", type=Path, help="queue.yaml with rates, limits and retries")
    parser.add_argument("--max-connections", type=int, default=64, help="open connections at most (64)")
    parser.add_argument("--no-rate-limits", action="store_true", help="ignore queue rates (benchmarks)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds pushes in flight get on stop (5)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    queues = load_queue_config(args.queue_yaml) if args.queue_yaml else {"default": QueueConfig(name="default")}
    dispatcher = LocalDispatcher(
        LocalQueueStore(args.db), args.url, queues,
        max_connections=args.max_connections, rate_limits=not args.no_rate_limits,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dispatcher.request_stop(args.grace)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("pushing tasks of %s to %s (queues: %s)", args.db, args.url, ", ".join(sorted(queues)))
    dispatcher.run_forever()
    stats = dispatcher.stats
    log.info("stopped after %d attempt(s) over %d connection(s): %d succeeded, %d retried, %d failed",
             stats.attempts, stats.connections, stats.succeeded, stats.retried, stats.failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
