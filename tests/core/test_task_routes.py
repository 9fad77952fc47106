"""Push routes skip the browser's work: no session opened or saved, no user or language from the request."""
from __future__ import annotations

import pytest
from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface

from core import current
from core.task_routes import TaskRoutes
from core.tasks import Tasks, callDeferred
from core.tasks.runtime import runtime_of

SEEN: list[tuple[object, object]] = []


@callDeferred
def remember() -> None:
    SEEN.append((current.user.get(), current.language.get()))


class CountingSessions(SecureCookieSessionInterface):
    def __init__(self) -> None:
        self.opened: list[str] = []
        self.saved: list[str] = []

    def open_session(self, app, request):
        self.opened.append(request.path)
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        self.saved.append(request.path)
        super().save_session(app, session, response)


class SessionUsers:
    def __init__(self) -> None:
        self.loaded_from: list[str] = []

    def load_from_request(self, request):
        self.loaded_from.append(request.path)
        name = session.get("user")
        return {"id": name} if name else None

    def load_by_id(self, user_id):
        return {"id": user_id, "reloaded": True}

    def id_of(self, user):
        return user["id"]

    def is_admin(self, user):
        return False


@pytest.fixture
def web(settings):
    SEEN.clear()
    app = Flask(__name__)
    app.session_interface = sessions = CountingSessions()
    users = SessionUsers()
    selected: list[str] = []

    def select_language(request):
        selected.append(request.path)
        return request.headers.get("X-Lang", "en")

    Tasks(app, settings=settings, startup_tasks=False, users=users, languages=("en", "de"),
          language_selector=select_language)

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return "in"

    @app.post("/defer")
    def defer() -> str:
        remember()
        return "queued"

    app.testing = True
    return app, sessions, users, selected


def push_with_cookie(app: Flask, client) -> list:
    """Push every queued task with the browser's client (its session cookie goes along)."""
    queue = runtime_of(app).transport
    responses = []
    while queue.pending:
        task = queue.pending.pop(0)
        headers = {**task.request.headers, "X-AppEngine-QueueName": task.request.queue,
                   "X-AppEngine-TaskName": task.id, "X-AppEngine-TaskRetryCount": "0",
                   "X-AppEngine-TaskExecutionCount": "0"}
        responses.append(client.post(task.request.path, data=task.request.body, headers=headers))
    return responses


def test_a_push_opens_no_session_and_asks_for_no_user_or_language(web, datastore):
    app, sessions, users, selected = web
    client = app.test_client()
    assert client.post("/login/ada").status_code == 200
    assert client.post("/defer", headers={"X-Lang": "de"}).status_code == 200
    assert sessions.opened == ["/login/ada", "/defer"] and users.loaded_from == ["/login/ada", "/defer"]
    assert selected == ["/login/ada", "/defer"]

    (response,) = push_with_cookie(app, client)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.headers.get("Vary", "")
    assert sessions.opened == ["/login/ada", "/defer"], "the push opened the session"
    assert sessions.saved == ["/login/ada", "/defer"], "the push saved the session"
    assert users.loaded_from == ["/login/ada", "/defer"], "the push loaded a user from the request"
    assert selected == ["/login/ada", "/defer"], "the push negotiated a language"
    # The task still runs as its caller: user reloaded by id, language from the envelope.
    assert SEEN == [({"id": "ada", "reloaded": True}, "de")]


def test_a_push_route_may_write_its_session_and_nothing_is_sent(web, datastore):
    app, sessions, _, _ = web

    @app.before_request
    def mark_permanent() -> None:
        session.permanent = True

    client = app.test_client()
    client.post("/defer")
    (response,) = push_with_cookie(app, client)
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert sessions.opened == ["/defer"]
    assert SEEN == [(None, "en")]


def test_pages_under_the_task_mount_keep_their_session(web, datastore):
    app, sessions, users, selected = web
    client = app.test_client()
    client.get("/_tasks/admin")
    client.get("/_tasks/list")
    assert sessions.opened == ["/_tasks/admin", "/_tasks/list"]
    assert users.loaded_from == sessions.opened and selected == sessions.opened


def test_the_push_routes_are_the_handlers_and_what_lies_below_them():
    routes = TaskRoutes(["/_tasks/deferred", "/_tasks/cron"])
    assert "/_tasks/deferred" in routes and "/_tasks/cron/default" in routes
    assert "/_tasks/deferredx" not in routes and "/_tasks/admin" not in routes and "/_tasks" not in routes
    assert "/_tasks/cronjob" not in routes and None not in routes


def test_the_task_handler_declares_its_push_routes(web):
    app, _, _, _ = web
    assert app.extensions["core.task_routes"].paths == {"/_tasks/deferred", "/_tasks/queryIter", "/_tasks/cron"}
