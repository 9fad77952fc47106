"""Routes that only a queue or a scheduler calls: they skip the web work that a browser request needs.

A push to ``/_tasks/deferred`` (or ``queryIter``, ``cron``) carries no session cookie worth
reading and no reader whose language matters: the task's envelope brings the caller's user and
language, and the executor restores both. So on these routes the app's session is never opened
nor saved (a throw-away empty session stands in, so code that writes one still works) and the
user and language are not looked up from the request.

``/_tasks/deferred`` and ``/_tasks/queryIter`` go further: :class:`DirectPushes` sits in front of
Flask as the app's WSGI entry and hands a queue's ``POST`` straight to the executor, under an app
context but without Flask's routing, request context, request hooks or response object.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, cast

from flask import Flask
from flask.sessions import SecureCookieSession, SessionInterface

from core import current, request_bodies, safety, trace
from core.module import ModuleTree
from core.tasks import executor
from core.tasks.auth.queue_headers import environ_headers
from core.tasks.handler import TaskHandler, outcome_headers
from core.tasks.outbox import RequestScope
from core.tasks.runtime import TaskRuntime
from core.tasks.startup import runStartupTasks

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TaskRoutes:
    """The URL paths (and everything below them) of the push routes of an app's module tree."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        self._prefixes = tuple(sorted(f"{path}/" for path in self.paths))

    @classmethod
    def of_tree(cls, tree: ModuleTree) -> TaskRoutes:
        """Every ``push_routes`` method of every mounted module (the task handler declares its own)."""
        return cls(f"/{path}/{name}" for path, module in tree.items() for name in getattr(module, "push_routes", ()))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self.paths or path.startswith(self._prefixes))


class TaskRouteSession(SecureCookieSession):
    """The empty session of a push route: it may be written to, and is never saved."""


class TaskRouteSessions:
    """The app's session interface, except that push routes neither open nor save a session.

    Not a subclass: every other attribute (cookie settings, the app's own overrides) is the inner one's.
    """

    def __init__(self, inner: SessionInterface, routes: TaskRoutes) -> None:
        self.inner = inner
        self.routes = routes

    def open_session(self, app: Flask, request: Any) -> Any:
        if request.path in self.routes:
            return TaskRouteSession()
        return self.inner.open_session(app, request)

    def is_null_session(self, obj: object) -> bool:
        return isinstance(obj, TaskRouteSession) or self.inner.is_null_session(obj)

    def make_null_session(self, app: Flask) -> Any:
        return self.inner.make_null_session(app)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        self.inner.save_session(app, session, response)

    def __getattr__(self, name: str) -> Any:
        # Cookie settings and anything an extension asks the app's interface for.
        return getattr(self.inner, name)


def init_app(app: Flask, tree: ModuleTree) -> TaskRoutes:
    """Find the push routes of ``tree`` and keep the app's sessions off them; returns the routes.

    An app that sets its own ``session_interface`` does so before ``Tasks(app)``: it is wrapped here.
    """
    routes = TaskRoutes.of_tree(tree)
    if not isinstance(app.session_interface, TaskRouteSessions):
        # Flask only calls the interface's methods, which the wrapper has (it is not a subclass, see above).
        app.session_interface = cast(SessionInterface, TaskRouteSessions(app.session_interface, routes))
    return routes


#: The task handler's routes :class:`DirectPushes` serves, when a mounted handler does not override them.
DIRECT_ROUTES = ("deferred", "queryIter")


def direct_paths(tree: ModuleTree) -> frozenset[str]:
    """``/<mount>/deferred`` and ``/<mount>/queryIter`` of every task handler whose methods are the built-in ones."""
    return frozenset(
        f"/{path}/{name}" for path, module in tree.items() if isinstance(module, TaskHandler)
        for name in DIRECT_ROUTES if getattr(type(module), name) is getattr(TaskHandler, name)
    )


class DirectPushes:
    """The app's WSGI entry: a queue's ``POST`` to a direct path runs through the executor at once.

    Such a push uses nothing Flask does per request (URL matching, a request context, the request
    hooks, a response object): on a no-op task that was about half of the app's CPU. It runs in
    an app context, so task code has ``current_app`` and ``g``, with ``core.current`` set as on any
    request (the executor then restores the caller's user and language). Everything else, including
    a chunked body, goes to Flask. ``Tasks(app, direct_pushes=False)`` sends pushes through Flask.
    """

    def __init__(self, app: Flask, inner: WSGIApp, paths: Iterable[str], *,
                 bodies: request_bodies.BodyDeadline | None = None) -> None:
        self.app = app
        self.inner = inner
        self.paths = frozenset(paths)
        #: Reads a push's body within the app's body timeout (``None``: reads it unbounded).
        self.bodies = bodies

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") not in self.paths:
            return self.inner(environ, start_response)
        length = _content_length(environ)
        if length is None:  # chunked, or no length: Flask's body reading handles it
            return self.inner(environ, start_response)
        if length > self.app.config[safety.LIMIT_KEY]:
            return _answer(start_response, 413, "request body too large")
        try:
            body = (environ["wsgi.input"].read(length) if self.bodies is None else self.bodies.read(environ, length)
                    ) if length else b""
        except request_bodies.BodyTimeout:
            return _answer(start_response, 408, "request body not sent in time")
        if len(body) != length:
            return _answer(start_response, 400, "request body shorter than its Content-Length")
        return self._run(environ, start_response, body)

    def _run(self, environ: dict[str, Any], start_response: Callable[..., Any], body: bytes) -> Iterator[bytes]:
        app = self.app
        runtime: TaskRuntime = app.extensions["core"]
        with app.app_context():
            queue_startup_tasks_once(app)
            entered = current.enter(language=app.config["LANGUAGES"][0], trace=trace.from_environ(environ))
            try:
                with RequestScope(runtime):
                    outcome = executor.execute(runtime, method="POST", path=environ["PATH_INFO"],
                                               headers=environ_headers(environ), body=body)
            except Exception:
                if app.config.get("PROPAGATE_EXCEPTIONS") or app.testing:
                    raise
                log.exception("the task push to %s crashed", environ["PATH_INFO"])
                return _answer(start_response, 500, "internal error")
            finally:
                current.leave(entered)
        return _answer(start_response, outcome.status, outcome.message, outcome_headers(outcome))


def queue_startup_tasks_once(app: Flask) -> None:
    """At the app's first request of any kind, queue this version's startup tasks (in the background)."""
    runtime = app.extensions["core"]
    state = runtime.app_state
    if state is not None and state.startup_pending:
        state.startup_pending = False
        runStartupTasks(runtime, background=True)


def _content_length(environ: Mapping[str, Any]) -> int | None:
    if environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    value = environ.get("CONTENT_LENGTH")
    if not value:
        return 0
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "UNKNOWN"
        line = _STATUS_LINES[status] = f"{status} {phrase}"
    return line


def _answer(start_response: Callable[..., Any], status: int, text: str,
            headers: Iterable[tuple[str, str]] = ()) -> Iterator[bytes]:
    """The plain-text response of a direct push, with the app's security headers."""
    data = (text + "\n").encode()
    start_response(_status_line(status), [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *headers,
        *safety.SECURITY_HEADERS.items(),
    ])
    return iter((data,))
