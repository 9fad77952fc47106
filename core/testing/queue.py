"""The in-process queue of a test app, with a clock the test controls.

``TaskQueue(app).run_pending()`` drains the app's inline transport through the real ``/_tasks``
handler and re-raises a failed task's error in the test (as dramatiq's ``StubBroker.join`` does).
Tasks run when they are due on :class:`TestClock`: a ``_countdown=60`` call runs only after
``advance(60)``, and a failed task comes back after its queue's retry backoff (queue.yaml's
``retry_parameters``, App Engine's defaults otherwise), as Cloud Tasks would schedule it.

The test clock *is* the app's clock: :class:`TaskQueue` installs it as the runtime's clock, so
``advance()`` moves the app (countdowns, ``_eta``, backoff, age limits, leases, record TTLs,
periodic due-ness) and the queue together.
"""
from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from core.tasks.auth.signing import sign_cron_ping
from core.tasks.outcome import Outcome
from core.tasks.queues import RetryConfig, backoff_delay, last_allowed_attempt
from core.tasks.runtime import TaskRuntime, runtime_of
from core.tasks.transports.inline import InlineTransport, QueuedTask, TaskFailed, push

UTC = datetime.UTC


class TestClock:
    """Wall-clock time shifted by what the test advanced: ``now()`` never goes backwards.

    ``start`` stops the clock at that moment instead: it then moves only when the test advances it
    (waits come out exact, and calendar tests run on a fixed day). ``now`` replaces the wall clock.
    """

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self, now: Callable[[], datetime.datetime] | None = None, *,
                 start: datetime.datetime | None = None) -> None:
        if start is not None:
            if now is not None:
                raise ValueError("TestClock: give now or start, not both")
            if start.tzinfo is None:
                raise ValueError("TestClock: start must be timezone-aware")
            now = lambda: start  # noqa: E731
        self._real = now or (lambda: datetime.datetime.now(UTC))
        self._offset = datetime.timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime.datetime:
        return self._real() + self._offset

    def advance(self, seconds: float) -> datetime.datetime:
        if seconds < 0:
            raise ValueError("the test clock only moves forward")
        with self._lock:
            self._offset += datetime.timedelta(seconds=seconds)
        return self.now()

    def advance_to(self, moment: datetime.datetime) -> datetime.datetime:
        """Move to ``moment`` unless the clock is already past it."""
        with self._lock:
            ahead = moment - (self._real() + self._offset)
            if ahead > datetime.timedelta(0):
                self._offset += ahead
        return self.now()


def install_test_clock(runtime: TaskRuntime, clock: TestClock | None = None) -> TestClock:
    """Make ``clock`` the runtime's clock; without one keep the runtime's test clock, or install a new one."""
    if clock is None:
        if isinstance(runtime.clock, TestClock):
            return runtime.clock
        clock = TestClock()
    runtime.clock = clock
    return clock


class TaskQueue:
    """The inline queue of one test app: run what is due, move the clock, ping cron groups.

    Its clock is the app's: ``clock`` (or the app's test clock already installed, or a new one)
    becomes the runtime's clock, which every queue of the app then shares.
    """

    __test__ = False

    def __init__(self, app: Flask, transport: InlineTransport | None = None, *,
                 clock: TestClock | None = None) -> None:
        self.app = app
        transport = transport if transport is not None else self.runtime.transport  # type: ignore[assignment]
        if not isinstance(transport, InlineTransport):
            raise TypeError("the test app must use the inline transport (TASKS_BACKEND=inline)")
        self.transport = transport
        install_test_clock(self.runtime, clock)
        self._order = itertools.count()

    @property
    def runtime(self) -> TaskRuntime:
        return runtime_of(self.app)

    @property
    def clock(self) -> TestClock:
        """The app's clock (the runtime's, so the app and this queue always read one time)."""
        return install_test_clock(self.runtime)

    @property
    def pending(self) -> list[QueuedTask]:
        return self.transport.pending

    def due(self, task: QueuedTask) -> datetime.datetime | None:
        """When ``task`` runs (``None``: at once)."""
        return task.due

    def advance(self, seconds: float, **kwargs: Any) -> list[Outcome]:
        """Move the clock ``seconds`` ahead, running every task due on the way; returns their outcomes."""
        return self.run_pending(until=self.clock.now() + datetime.timedelta(seconds=seconds), **kwargs)

    def run_pending(self, until: datetime.datetime | None = None, *, raise_errors: bool = True,
                    max_attempts: int | None = None, max_tasks: int = 100_000) -> list[Outcome]:
        """Run the tasks due now (or up to ``until``, moving the clock there), and those they queue.

        A failing task is raised as :class:`TaskFailed` with ``raise_errors`` and comes back after
        its queue's backoff, or is dropped once the queue's retry limit is reached. With
        ``max_attempts`` it is instead retried at once, up to that many executions in all.
        """
        if until is not None and until.tzinfo is None:
            raise ValueError("until must be timezone-aware")
        outcomes: list[Outcome] = []
        runtime = self.runtime
        runtime.outcome_listeners.append(outcomes.append)
        client = self.app.test_client()
        try:
            for _ in range(max_tasks):
                task = self._next(until)
                if task is None:
                    break
                self._run(client, task, outcomes, raise_errors=raise_errors, max_attempts=max_attempts)
            if until is not None:
                self.clock.advance_to(until)
        finally:
            runtime.outcome_listeners.remove(outcomes.append)
        return outcomes

    def _next(self, until: datetime.datetime | None) -> QueuedTask | None:
        now = self.clock.now()
        horizon = max(now, until) if until is not None else now
        with self.transport._lock:
            candidates = [(self.due(t) or now, i, t) for i, t in enumerate(self.pending)
                          if self.transport.runnable(t)]
            due = [c for c in candidates if c[0] <= horizon]
            if not due:
                return None
            moment, index, task = min(due, key=lambda c: (c[0], c[1]))
            del self.pending[index]
        self.clock.advance_to(moment)
        return task

    def _run(self, client: Any, task: QueuedTask, outcomes: list[Outcome], *, raise_errors: bool,
             max_attempts: int | None) -> None:
        failure = push(client, task, outcomes, raise_errors=raise_errors)
        if failure is None:
            return
        if max_attempts is not None:
            if task.execution_count < max_attempts:
                self._requeue(task, None)
                return
        else:
            retry = self.retry_config(task.request.queue)
            # The queue keeps no first-attempt time here: its retry limit alone ends a task.
            if last_allowed_attempt(task.execution_count, retry=retry) is None:
                delay = backoff_delay(retry, task.execution_count)
                self._requeue(task, self.clock.now() + datetime.timedelta(seconds=delay))
        if raise_errors:
            raise failure.exception() from failure.error

    def _requeue(self, task: QueuedTask, due: datetime.datetime | None) -> None:
        task.due = due
        with self.transport._lock:
            self.pending.append(task)

    def retry_config(self, queue: str) -> RetryConfig:
        """The retry policy of ``queue`` in the app's queue table (App Engine's defaults without one)."""
        return self.runtime.queues.retry_of(queue)

    def ping_cron(self, cron_name: str = "default", *, run: bool = True, **kwargs: Any) -> Any:
        """Send the cron group's ping as the local cron does (signed), then run what it queued.

        Returns the ping's response; a refused or failed ping raises :class:`TaskFailed`.
        """
        path = f"/_tasks/cron/{cron_name}"
        headers = {**sign_cron_ping(self.runtime.settings.tasks_secret, path), "X-Appengine-Cron": "true"}
        response = self.app.test_client().get(path, headers=headers)
        if not 200 <= response.status_code < 300:
            raise TaskFailed(path, None, f"cron ping answered {response.status_code}: "
                             f"{response.get_data(as_text=True).strip()}", None)
        if run:
            self.run_pending(**kwargs)
        return response
