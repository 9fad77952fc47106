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
    routes = app.extensions["core"].app_state.task_routes
    assert routes.paths == {"/_tasks/deferred", "/_tasks/queryIter", "/_tasks/cron"}


# --- direct pushes: /_tasks/deferred and queryIter skip Flask's request handling ------------------

HOOKED: list[str] = []
CONTEXTS: list[tuple[object, bool, object]] = []


@callDeferred
def look_around() -> None:
    from flask import current_app, has_request_context

    CONTEXTS.append((current_app.name, has_request_context(), current.task.get().task_name))


@callDeferred
def explode() -> None:
    raise RuntimeError("boom")


def hooked_app(settings, **options) -> Flask:
    HOOKED.clear()
    CONTEXTS.clear()
    app = Flask("hooked")
    Tasks(app, settings=settings, startup_tasks=False, **options)

    @app.before_request
    def seen() -> None:
        HOOKED.append(request.path)

    @app.post("/defer/<name>")
    def defer(name: str) -> str:
        {"look": look_around, "explode": explode}[name]()
        return "queued"

    return app


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-flask"])
def test_a_push_skips_the_apps_request_hooks_unless_told_not_to(settings, datastore, direct):
    app = hooked_app(settings, direct_pushes=direct)
    client = app.test_client()
    client.post("/defer/look")
    (response,) = push_with_cookie(app, client)
    assert response.status_code == 200 and response.headers["X-Task-Outcome"] == "ok"
    assert response.get_data(as_text=True) == "ok\n"
    assert response.headers["X-Frame-Options"] == "DENY" and response.mimetype == "text/plain"
    assert HOOKED == (["/defer/look"] if direct else ["/defer/look", "/_tasks/deferred"])
    (seen,) = CONTEXTS
    assert seen[0] == "hooked" and seen[1] is (not direct) and seen[2].startswith("inline-")


def test_a_direct_push_that_fails_answers_like_one_through_flask(settings, datastore):
    answers = []
    for direct in (True, False):
        app = hooked_app(settings, direct_pushes=direct)
        client = app.test_client()
        client.post("/defer/explode")
        (response,) = push_with_cookie(app, client)
        answers.append((response.status_code, response.headers["X-Task-Outcome"], response.get_data(as_text=True)))
    assert answers[0] == answers[1] and answers[0][:2] == (500, "RuntimeError")


def test_a_handler_subclass_that_overrides_the_route_gets_its_pushes(settings, datastore):
    from core.module import exposed
    from core.tasks.handler import TaskHandler

    class Counting(TaskHandler):
        calls = 0

        @exposed(methods=("POST",), raw=True)
        def deferred(self, *args, **kwargs):
            Counting.calls += 1
            return super().deferred(*args, **kwargs)

    app = Flask("sub")
    Tasks(app, settings=settings, startup_tasks=False, modules={"_tasks": Counting})
    assert app.wsgi_app.paths == {"/_tasks/queryIter"}

    @app.post("/defer")
    def defer() -> str:
        look_around()
        return "queued"

    client = app.test_client()
    client.post("/defer")
    (response,) = push_with_cookie(app, client)
    assert response.status_code == 200 and Counting.calls == 1


def test_a_direct_push_reads_its_body_by_length_and_refuses_what_is_too_long(settings, datastore):
    app = hooked_app(settings)
    limit = app.config["CORE_REQUEST_SIZE_LIMIT"]
    client = app.test_client()
    too_long = client.post("/_tasks/deferred", data=b"x" * (limit + 1))
    assert too_long.status_code == 413 and HOOKED == []
    unsigned = client.post("/_tasks/deferred", data=b"{}")
    assert unsigned.status_code == 403 and HOOKED == []
    # Not a POST, or below the route: Flask answers, as for any request.
    assert client.get("/_tasks/deferred").status_code == 405 and HOOKED == ["/_tasks/deferred"]


def test_a_body_shorter_than_its_length_is_a_bad_request():
    from core.task_routes import DirectPushes

    app = Flask("short")
    app.config["CORE_REQUEST_SIZE_LIMIT"] = 100
    entry = DirectPushes(app, lambda environ, start: [b"flask"], ["/_tasks/deferred"])
    statuses = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/_tasks/deferred", "CONTENT_LENGTH": "10",
               "wsgi.input": __import__("io").BytesIO(b"abc")}
    body = b"".join(entry(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["400 Bad Request"] and b"shorter" in body
    chunked = {**environ, "HTTP_TRANSFER_ENCODING": "chunked"}
    assert b"".join(entry(chunked, lambda *a: None)) == b"flask"
    assert b"".join(entry({**environ, "PATH_INFO": "/_tasks/deferred/x"}, lambda *a: None)) == b"flask"


def test_a_crash_outside_the_pipeline_is_a_500_not_an_escape(settings, datastore, monkeypatch, caplog):
    from core.tasks import executor

    app = hooked_app(settings)
    app.testing = False

    def crash(*args, **kwargs):
        raise RuntimeError("executor broke")

    monkeypatch.setattr(executor, "execute", crash)
    response = app.test_client().post("/_tasks/deferred", data=b"{}")
    assert response.status_code == 500 and "executor broke" in caplog.text
    app.testing = True
    with pytest.raises(RuntimeError, match="executor broke"):
        app.test_client().post("/_tasks/deferred", data=b"{}")


@pytest.mark.parametrize("first", ["push", "page"])
def test_the_first_request_queues_the_startup_tasks_once_whatever_it_is(settings, datastore, monkeypatch, first):
    from core import task_routes

    started = []
    monkeypatch.setattr(task_routes, "runStartupTasks", lambda runtime, background: started.append(runtime))
    app = Flask("starting")
    Tasks(app, settings=settings)
    client = app.test_client()
    if first == "push":
        client.post("/_tasks/deferred", data=b"{}")
    else:
        client.get("/_tasks/list")
    assert started == [runtime_of(app)]
    client.post("/_tasks/deferred", data=b"{}")
    client.get("/_tasks/list")
    assert started == [runtime_of(app)]
