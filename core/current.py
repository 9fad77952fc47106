"""Context variables readable from anywhere during a request or a task: request, user, language, trace.

ViUR code reads ``current.user.get()``; the same works here, in request handlers and in tasks
(the task handler restores the enqueuing user and language before it runs the task).
"""
from __future__ import annotations

import contextvars
from typing import Any

#: The Flask request being handled (``None`` in a queue's direct push, see :class:`core.task_routes.DirectPushes`,
#: and in a task started outside HTTP; a task reads what the queue said from ``task``).
request: contextvars.ContextVar[Any] = contextvars.ContextVar("core_request", default=None)
#: The signed-in user object as the app's user provider returns it, or ``None``.
user: contextvars.ContextVar[Any] = contextvars.ContextVar("core_user", default=None)
#: The language of the request or of the task's caller (e.g. ``"de"``).
language: contextvars.ContextVar[str | None] = contextvars.ContextVar("core_language", default=None)
#: Information about the task being executed (:class:`core.tasks.auth.queue_headers.TaskInfo`), or ``None``.
task: contextvars.ContextVar[Any] = contextvars.ContextVar("core_task", default=None)
#: The trace of the request, or in a task the trace of the request that deferred it
#: (:class:`core.trace.TraceContext`), or ``None``. Log lines and spans join it.
trace: contextvars.ContextVar[Any] = contextvars.ContextVar("core_trace", default=None)

_ALL = (request, user, language, task, trace)

#: What :func:`enter` returns and :func:`leave` takes back.
Entered = tuple["contextvars.Token[Any]", ...]


def enter(*, request: Any = None, user: Any = None, language: str | None = None, trace: Any = None,
          task: Any = None) -> Entered:
    """Set every variable above for a request or a task; undo with :func:`leave`.

    The one place ``core.current`` is set up: the Flask request, the queue's direct push, and the
    task run each call it, so a task sees the same values whichever way it came in.
    """
    return (_ALL[0].set(request), _ALL[1].set(user), _ALL[2].set(language), _ALL[3].set(task),
            _ALL[4].set(trace))


def leave(entered: Entered) -> None:
    """Restore what :func:`enter` replaced (in reverse order)."""
    request_token, user_token, language_token, task_token, trace_token = entered
    trace.reset(trace_token)
    task.reset(task_token)
    language.reset(language_token)
    user.reset(user_token)
    request.reset(request_token)
