"""The ``TaskHandler`` module, mounted at ``/_tasks``: HTTP in, executor, HTTP status out.

Every route verifies its request before anything runs; unverifiable requests get 4xx and never
5xx (Cloud Tasks retries 5xx). Outcome → status is the mapping of :mod:`core.tasks.errors`.

The callable-task pages (``list``, ``execute``) are ViUR's routes of this module, but the pages
themselves belong to the web layer: the app's :class:`CallablePages` (``core.admin`` gives them,
``Tasks(app)`` keeps them on the app's runtime, ``app_state.callable_pages``) answer there, so the task layer
never imports the admin pages.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request

from core.module import Module, exposed
from core.safety import read_body
from core.tasks import executor
from core.tasks.auth.queue_headers import lowered_headers
from core.tasks.outcome import Outcome
from core.tasks.periodic.kind import find_bound_task
from core.tasks.pipeline import RETRY_WARNING_THRESHOLD
from core.tasks.runtime import get_runtime

log = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"

@dataclasses.dataclass(frozen=True)
class CallablePages:
    """The views behind ``/_tasks/list[/json]`` and ``/_tasks/execute/<taskID>``."""

    list: Callable[..., Any]
    execute: Callable[[str | None], Any]


def callable_pages() -> CallablePages | None:
    """The current app's pages (``Tasks(app)`` installs the dashboard's), else ``None``."""
    state = get_runtime().app_state
    return None if state is None else state.callable_pages


def outcome_headers(outcome: Outcome) -> list[tuple[str, str]]:
    """What a task response says of its outcome besides the status: ``X-Task-Outcome``."""
    return [("X-Task-Outcome", "ok" if outcome.error is None else type(outcome.error).__name__)]


def outcome_response(outcome: Outcome) -> Response:
    return Response(outcome.message + "\n", status=outcome.status, content_type=_TEXT,
                    headers=outcome_headers(outcome))


def run_task_request(*kinds: str) -> Response:
    """Hand the current Flask request to the executor (a kind's own routes say where it may come)."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    outcome = executor.execute(get_runtime(), method=req.method, path=req.path, headers=req.headers,
                               body=read_body(), expected_kinds=kinds or None)
    return outcome_response(outcome)


class TaskHandler(Module):
    """Task Handler: runs queued tasks (deferred calls, query-iterator chunks) and cron pings."""

    #: ViUR's: the task handler has no entry in an admin's module list (``None``, as ViUR 3 sets it).
    adminInfo = None  # noqa: N815 - ViUR's name
    #: ViUR's name: from this retry on, each failure is logged as an error and mailed once. The
    #: pipeline reads it from the mounted handler, so a subclass's value is the app's.
    retryCountWarningThreshold = RETRY_WARNING_THRESHOLD  # noqa: N815 - ViUR's name
    #: The routes only queues and schedulers call: no session, no user or language from the request.
    push_routes = ("deferred", "queryIter", "cron")

    @exposed(methods=("POST",), raw=True)
    def deferred(self, *args: Any, **kwargs: Any) -> Response:
        """Run one deferred call."""
        return run_task_request()

    @exposed(methods=("POST",), raw=True)
    def queryIter(self, *args: Any, **kwargs: Any) -> Response:  # noqa: N802 - ViUR's name
        """Run one chunk of a query iterator."""
        return run_task_request()

    @exposed(methods=("GET", "POST"))
    def cron(self, cronName: str = "default", *args: Any, **kwargs: Any) -> Response:  # noqa: N803
        """Enqueue every periodic task of the cron group that is due (cron / Cloud Scheduler ping)."""
        outcome = executor.execute(get_runtime(), method=request.method, path=request.path,
                                   headers=lowered_headers(request.headers), body=read_body(),
                                   cron=cronName)
        response = jsonify(outcome.data if outcome.data is not None else {"error": outcome.message})
        response.status_code = outcome.status
        response.headers.extend(outcome_headers(outcome))
        return response

    @exposed(methods=("GET",))
    def list(self, *args: Any, **kwargs: Any) -> Any:
        """The callable tasks the current user may run (HTML, or JSON when asked for)."""
        pages = callable_pages()
        return pages.list(*args) if pages is not None else _no_pages()

    @exposed(methods=("GET", "POST"))
    def execute(self, taskID: str | None = None, *args: Any, **kwargs: Any) -> Any:  # noqa: N803
        """Show a callable task's form (GET) or queue a run of it (POST)."""
        pages = callable_pages()
        return pages.execute(taskID) if pages is not None else _no_pages()

    def findBoundTask(self, task: Any, obj: Any = None, depth: int = 0) -> Any:  # noqa: N802
        """ViUR's lookup of the live instance a periodic method belongs to: ``(bound method, instance)``."""
        return find_bound_task(task, obj, depth)


def _no_pages() -> Response:
    return Response("this app serves no callable-task pages\n", status=404, mimetype="text/plain")
