"""The one process that pushes due tasks of a local queue file to the app, the way Cloud Tasks does.

Delivery is at least once. Leased tasks are marked in the file; a dispatcher holds an exclusive
lock on ``<db>.dispatcher.lock`` while it runs, so a new one knows every lease it finds is left
over from a dead one and reclaims it on start. Outcomes are written in batches at most
``flush_interval`` (50 ms) apart: a crash re-delivers the tasks whose outcome was not written.

It sleeps until the transport's datagram says tasks were added (see
:mod:`~core.tasks.transports.local.wake`), a scheduled task falls due, or ``poll_interval``
passes: the fallback that finds tasks whose wakeup was lost.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping

from core.tasks.errors import ConfigurationError
from core.tasks.queues import QueueConfig
from core.tasks.transports.local.controls import take_up_pauses
from core.tasks.transports.local.http import Pusher
from core.tasks.transports.local.policy import QueueState, next_attempt
from core.tasks.transports.local.rows import FAILED, FailedAttempt, LeasedTask, StoredTask
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.wake import WakeListener

log = logging.getLogger(__name__)

#: How often to look for new tasks where no wakeup socket could be bound.
_POLL_WITHOUT_WAKEUPS = 0.005
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


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
    ``wakeups=False`` ignores the transport's datagrams (only ``poll_interval`` finds new tasks).
    """

    def __init__(
        self,
        store: LocalQueueStore,
        base_url: str,
        queues: Mapping[str, QueueConfig],
        *,
        max_connections: int = 64,
        rate_limits: bool = True,
        poll_interval: float = 1.0,
        flush_interval: float = 0.05,
        batch_size: int = 256,
        wakeups: bool = True,
    ) -> None:
        self.store = store
        self.base_url = base_url
        self.stats = DispatcherStats()
        self._pusher = Pusher(
            base_url, max_connections=max_connections, counters=self.stats,
            on_response=self._answered, on_failure=self._failed, on_timeout=self._timed_out,
        )
        self._prefix = self._pusher.prefix
        self._configs = dict(queues)
        self._rate_limits = rate_limits
        self._max_connections = self._pusher.max_connections
        self._poll_interval = poll_interval
        self._flush_interval = flush_interval
        self._batch = max(1, batch_size)
        self._wakeups = wakeups
        self._queues: dict[str, QueueState] = {}
        self._warned: set[str] = set()
        #: Queues an operator paused at run time (read from the store whenever it changes).
        self._paused: set[str] = set()
        # Outcomes not yet written: ids done, names of those done, rows to retry or fail.
        self._done: list[int] = []
        self._ended: list[tuple[str, str]] = []
        self._again: list[FailedAttempt] = []
        self._first_outcome = 0.0
        self._version = -1
        #: Set by a wakeup datagram: look at the store on the next turn of the loop.
        self._woken = True
        self._checked_version = 0.0
        self._scanned_queues = 0.0
        self._rescan = False
        self._scanned_deadlines = 0.0
        self._purged_names = 0.0
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Lock()
        self._stop = threading.Event()
        self._grace = 10.0
        self._listener: WakeListener | None = None
        self._stop_r: socket.socket | None = None
        self._stop_w: socket.socket | None = None

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
        sock = self._stop_w
        if sock is not None:
            try:
                sock.send(b"\0")
            except OSError:
                pass

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
            self._pusher.open()
            self._pusher.reuse = True
            self._stop_r, self._stop_w = socket.socketpair()
            self._stop_r.setblocking(False)
            self._stop_w.setblocking(False)
            self._pusher.add_reader(self._stop_r.fileno(), self._drain_stop)
            self._listener = WakeListener.bind(self.store.path) if self._wakeups else None
            if self._listener is not None:
                self._pusher.add_reader(self._listener.fileno(), self._wake)
            elif self._wakeups:
                log.warning("no wakeup socket for %s: looking for new tasks every %g s",
                            self.store.path.name, _POLL_WITHOUT_WAKEUPS)
            reclaimed = self.store.reclaim_leases()
            if reclaimed:
                log.info("reclaimed %d task(s) leased by a dispatcher that did not stop cleanly", reclaimed)
            # Every queue's empty_version (-1) differs from this, so the first turn looks at all.
            self._version, self._woken = self.store.data_version(), True
            self._read_paused()
            self._queues = {name: self._queue_state(config) for name, config in self._configs.items()}
            self._scan_queues(time.monotonic())
        except BaseException:
            self._close_loop()
            raise

    def _queue_state(self, config: QueueConfig) -> QueueState:
        return QueueState(config, self._rate_limits, self._pusher.host_header)

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
            self._pusher.reuse = False
            give_up = time.monotonic() + grace
            while self._pusher.active and time.monotonic() < give_up:
                self._pusher.poll(min(0.05, max(0.0, give_up - time.monotonic())))
                self._pusher.expire(time.monotonic())
            held = [task.id for _q, task in self._pusher.abandon()]
            for q in self._queues.values():
                held.extend(task.id for task in q.buffer)
                q.buffer.clear()
                q.inflight = 0
            self._flush()
            if held:
                self.store.release(held)
        finally:
            if close_connection:
                self.store.close_thread()
            self._close_loop()

    def _close_loop(self) -> None:
        self._pusher.close()
        for sock in (self._stop_r, self._stop_w):
            if sock is not None:
                sock.close()
        self._stop_r = self._stop_w = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
        self._stop.clear()
        self._running.release()

    def _drain_stop(self) -> None:
        try:
            while self._stop_r is not None and self._stop_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self) -> None:
        assert self._listener is not None
        self._listener.drain()
        self._woken = True

    # the loop

    def _loop(self, *, idle_exit: bool, wait_scheduled: bool, give_up: float | None) -> None:
        pusher = self._pusher
        poll_interval = self._poll_interval
        if self._wakeups and self._listener is None:
            poll_interval = min(poll_interval, _POLL_WITHOUT_WAKEUPS)
        while not self._stop.is_set():
            mono = time.monotonic()
            if give_up is not None and mono > give_up:
                raise TimeoutError("the local queue did not become idle in time")
            now = time.time()
            # New tasks matter only while a connection is free to push them.
            if len(pusher.active) < self._max_connections and (
                self._woken or mono - self._checked_version >= poll_interval
                or (self._rescan and mono - self._scanned_queues > 1.0)
            ):
                self._check_version(mono)
            started = self._fill(now, mono)
            unwritten = len(self._done) + len(self._again)
            if unwritten and (
                not pusher.active or unwritten >= self._batch or mono - self._first_outcome >= self._flush_interval
            ):
                self._flush()
                continue
            if idle_exit and not started and not pusher.active and self._is_idle(now, wait_scheduled):
                return
            pusher.poll(self._timeout(now, mono, poll_interval))
            mono = time.monotonic()
            if mono - self._scanned_deadlines >= 0.05:  # also the resolution of dispatch deadlines
                self._scanned_deadlines = mono
                pusher.expire(mono)
            if mono - self._purged_names > 60.0:
                self._purged_names = mono
                self.store.purge_names()

    def _check_version(self, mono: float) -> None:
        self._checked_version, self._woken = mono, False
        version = self.store.data_version()
        if version != self._version:
            self._version = version
            self._rescan = True
            self._read_paused()
        if self._rescan and mono - self._scanned_queues > 1.0:
            self._scan_queues(mono)

    def _read_paused(self) -> None:
        self._paused = take_up_pauses(self.store, self._queues, self._paused)

    def _held(self, q: QueueState) -> bool:
        """Whether ``q`` pushes nothing now: paused in queue.yaml (``rate: 0``) or at run time."""
        return q.config.paused or q.name in self._paused

    def _scan_queues(self, mono: float) -> None:
        self._scanned_queues, self._rescan = mono, False
        for name in self.store.queue_names():
            if name not in self._queues:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("queue %r is not configured: pushing its tasks with default settings", name)
                self._queues[name] = self._queue_state(QueueConfig(name=name))

    def _fill(self, now: float, mono: float) -> int:
        """Start as many pushes as the limits allow; return how many started."""
        started = 0
        active = self._pusher.active
        for q in self._queues.values():
            if self._held(q):
                continue
            while True:
                room = min(self._max_connections - len(active), q.limit - q.inflight)
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
                    self._begin(q, q.buffer.popleft(), now, mono)
                    started += 1
        return started

    def _is_idle(self, now: float, wait_scheduled: bool) -> bool:
        for q in self._queues.values():
            if self._held(q):
                continue
            if q.buffer or q.empty_version != self._version:
                return False
            if q.next_eta is not None and (wait_scheduled or q.next_eta <= now):
                return False
        return not (self._done or self._again)

    def _timeout(self, now: float, mono: float, poll_interval: float) -> float:
        """How long the poller may sleep before the loop has something to do."""
        if self._pusher.active:
            timeout = 0.05  # also the resolution of dispatch deadlines
        else:
            timeout = max(0.0, self._checked_version + poll_interval - mono)
        if self._done or self._again:
            timeout = min(timeout, self._first_outcome + self._flush_interval - mono)
        if self._rescan:
            timeout = min(timeout, self._scanned_queues + 1.0 - mono)
        if len(self._pusher.active) < self._max_connections:
            for q in self._queues.values():
                if self._held(q) or q.inflight >= q.limit:
                    continue
                if q.buffer or (q.next_eta is not None and q.next_eta <= now):
                    if self._rate_limits and q.tokens < 1:
                        timeout = min(timeout, (1 - q.tokens) / q.config.rate_per_second)
                elif q.next_eta is not None:
                    timeout = min(timeout, q.next_eta - now)
        return max(0.0, timeout)

    # one push and its outcome

    def _begin(self, q: QueueState, task: LeasedTask, now: float, mono: float) -> None:
        """Build the request for a leased task and start sending it."""
        if self._rate_limits:
            q.tokens -= 1
        method, body, retry_count = task.method, task.body, task.retry_count
        previous = (
            f"X-AppEngine-TaskPreviousResponse: {task.last_status}\r\n"
            if retry_count and task.last_status is not None else ""
        )
        length = f"Content-Length: {len(body)}\r\n" if body or method not in _NO_BODY_METHODS else ""
        head = (
            f"{method} {self._prefix}{task.path}{q.header}{task.name}\r\n"
            f"X-AppEngine-TaskRetryCount: {retry_count}\r\nX-AppEngine-TaskExecutionCount: "
            f"{task.execution_count}\r\nX-AppEngine-TaskETA: {task.eta:.6f}\r\n{previous}{task.headers}{length}\r\n"
        )
        q.inflight += 1
        self.stats.attempts += 1
        self._pusher.push(
            (q, task), head.encode("latin-1") + body,
            head_request=method == "HEAD", started=now, deadline=mono + (task.deadline or q.deadline),
        )

    def _answered(self, job: tuple[QueueState, LeasedTask], started: float, status: int, body: bytes) -> None:
        q, task = job
        q.inflight -= 1
        if 200 <= status < 300:
            self.stats.succeeded += 1
            if not (self._done or self._again):
                self._first_outcome = time.monotonic()
            self._done.append(task.id)
            if task.named:
                self._ended.append((q.name, task.name))
            return
        text = body.decode("utf-8", "replace").strip()
        error = f"HTTP {status}: {text[:200]}" if text else f"HTTP {status}"
        # Cloud Tasks does not count 503 (no instance available) as an execution.
        self._retry_or_fail(q, task, started, error, status=status, responded=status != 503)

    def _failed(self, job: tuple[QueueState, LeasedTask], started: float, error: str) -> None:
        q, task = job
        q.inflight -= 1
        self._retry_or_fail(q, task, started, error, status=None, responded=False)

    def _timed_out(self, job: tuple[QueueState, LeasedTask], started: float) -> None:
        q, task = job
        q.inflight -= 1
        self.stats.timeouts += 1
        error = f"no response within the dispatch deadline of {float(task.deadline or q.deadline):g} s"
        self._retry_or_fail(q, task, started, error, status=None, responded=False)

    def _retry_or_fail(
        self, q: QueueState, task: LeasedTask, started: float, error: str, *, status: int | None, responded: bool,
    ) -> None:
        """Schedule the next attempt, or keep the task as failed once its retry limits are reached."""
        attempts = task.retry_count + 1
        first_attempt = started if task.first_attempt is None else task.first_attempt
        state, eta = next_attempt(q.config, attempts, first_attempt, time.time())
        if state == FAILED:
            self.stats.failed += 1
            log.warning("task %s of queue %r failed after %d attempt(s): %s", task.name, q.name, attempts, error)
        else:
            self.stats.retried += 1
            if q.next_eta is None or eta < q.next_eta:
                q.next_eta = eta
        if not (self._done or self._again):
            self._first_outcome = time.monotonic()
        self._again.append(FailedAttempt(state, eta, int(responded), started, status, error, task.id))

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
