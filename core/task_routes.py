"""Routes that only a queue or a scheduler calls: they skip the web work that a browser request needs.

A push to ``/_tasks/deferred`` (or ``queryIter``, ``cron``) carries no session cookie worth
reading and no reader whose language matters: the task's envelope brings the caller's user and
language, and the executor restores both. So on these routes the app's session is never opened
nor saved (a throw-away empty session stands in, so code that writes one still works) and the
user and language are not looked up from the request.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask
from flask.sessions import SecureCookieSession, SessionInterface

from core.module import ModuleTree


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
        app.session_interface = TaskRouteSessions(app.session_interface, routes)
    return routes
