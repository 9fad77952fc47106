"""The callable-task pages and the task dashboard through the Flask client, the real handler and the emulator."""
from __future__ import annotations

import re
from typing import Any

import pytest
from flask import session
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, StringField
from wtforms.validators import DataRequired, NumberRange

from core import current, db
from core.admin import TaskAdmin
from core.db import query as db_query
from core.tasks import PermanentTaskFailure, callDeferred
from core.tasks.callable import RUN_KIND, CallableTask, CallableTaskBase
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.periodic.kind import run_cron
from core.tasks.queryiter import QueryIter
from core.tasks.registry import isolated_registry
from tests.conftest import TaskQueue

CALLS: list[tuple[str, Any, Any]] = []
#: Tokens whose deferred call fails permanently (the first time): turns a call into a dead letter.
DOOMED: set[str] = set()


class Users:
    """Users in a dict, signed in by ``session["uid"]``; ``login_url`` as the example provides it."""

    login_url = "/login"

    def __init__(self) -> None:
        self.users = {"ann": {"name": "ann", "admin": True}, "bob": {"name": "bob", "admin": False},
                      "cy": {"name": "cy", "admin": False}}

    def load_from_request(self, req: Any) -> dict[str, Any] | None:
        return self.users.get(session.get("uid", ""))

    def load_by_id(self, user_id: str) -> dict[str, Any] | None:
        return self.users.get(user_id)

    def id_of(self, user: Any) -> str | None:
        return user["name"]

    def is_admin(self, user: Any) -> bool:
        return bool(user and user["admin"])


class InvoiceForm(FlaskForm):
    month = StringField("Month", validators=[DataRequired()])
    count = IntegerField("How many", validators=[DataRequired(), NumberRange(min=1, max=10)])
    secret = PasswordField("Secret")


class MakeInvoices(CallableTaskBase):
    key = "make_invoices"
    name = "Make invoices"
    descr = "Makes <b>invoices</b>."

    def canCall(self) -> bool:  # noqa: N802
        return current.user.get() is not None

    def dataSkel(self) -> type[FlaskForm]:  # noqa: N802
        return InvoiceForm

    def execute(self, month: str, count: int, secret: str) -> None:  # type: ignore[override]
        CALLS.append(("make_invoices", {"month": month, "count": count, "secret": secret},
                      current.user.get()["name"]))


class Purge(CallableTaskBase):
    """No input; admins only (the default ``canCall``)."""

    key = "purge"
    name = "Purge caches"

    def execute(self) -> None:  # type: ignore[override]
        CALLS.append(("purge", None, current.user.get()["name"]))


@callDeferred
def sometimes_doomed(token: str) -> None:
    CALLS.append(("sometimes_doomed", token, None))
    if token in DOOMED:
        DOOMED.discard(token)
        raise PermanentTaskFailure(f"doomed {token}")


def tidy() -> None:
    """Declared periodic inside the test registry."""
    CALLS.append(("tidy", None, None))


class Counter(QueryIter):
    """Counts ``thing`` entities, a few per chunk so runs take several steps."""

    maxEntriesPerChunk = 3

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        CALLS.append(("count", entry.key.id_or_name, None))


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    DOOMED.clear()


@pytest.fixture
def app(make_app):
    with isolated_registry() as registry:
        CallableTask(MakeInvoices)
        CallableTask(Purge)
    registry.deferred.add(sometimes_doomed.target.name, sometimes_doomed.target)
    registry.query_iters.add(Counter.iter_id, Counter)
    with isolated_registry(registry):
        PeriodicTask(interval=60)(tidy)
    return make_app({"_tasks/admin": TaskAdmin}, registry=registry, users=Users())


@pytest.fixture
def queue(app) -> TaskQueue:
    return TaskQueue(app)


def client_as(app, name: str | None):
    client = app.test_client()
    if name is not None:
        with client.session_transaction() as sess:
            sess["uid"] = name
    return client


@pytest.fixture
def ann(app):
    return client_as(app, "ann")


@pytest.fixture
def bob(app):
    return client_as(app, "bob")


@pytest.fixture
def anon(app):
    return client_as(app, None)


def csrf_of(response) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', response.get_data(as_text=True))
    assert match, "the page has no CSRF token"
    return match.group(1)


def runs() -> list[db.Entity]:
    return db.Query(RUN_KIND).run()


# --- /_tasks/list --------------------------------------------------------------------------------

def test_anonymous_visitors_see_nothing_callable(anon):
    page = anon.get("/_tasks/list")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Make invoices" not in html and "Purge" not in html and 'href="/login?next=/_tasks/list"' in html
    assert anon.get("/_tasks/list/json").json == {"tasks": []}


@pytest.mark.parametrize("ask", ["/_tasks/list/json", "/_tasks/list?format=json", "accept"])
def test_the_list_is_json_when_asked_for(bob, ask):
    response = bob.get("/_tasks/list", headers={"Accept": "application/json"}) if ask == "accept" else bob.get(ask)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.json == {"tasks": [{"key": "make_invoices", "name": "Make invoices",
                                        "descr": "Makes <b>invoices</b>.", "kindName": "server-task",
                                        "has_form": True, "url": "/_tasks/execute/make_invoices"}]}


def test_a_plain_user_sees_only_what_can_call_allows_and_admins_see_all(bob, ann):
    html = bob.get("/_tasks/list").get_data(as_text=True)
    assert "Make invoices" in html and "Purge caches" not in html
    assert "Makes &lt;b&gt;invoices&lt;/b&gt;." in html  # escaped
    assert "/_tasks/admin" not in html  # no dashboard links for plain users
    assert [t["key"] for t in ann.get("/_tasks/list/json").json["tasks"]] == ["make_invoices", "purge"]
    assert 'href="/_tasks/admin/failed"' in ann.get("/_tasks/list").get_data(as_text=True)


def test_unknown_list_variants_are_404(bob):
    assert bob.get("/_tasks/list/xml").status_code == 404


# --- /_tasks/execute ------------------------------------------------------------------------------

def test_the_form_page_renders_the_declared_fields_with_a_csrf_token(bob):
    page = bob.get("/_tasks/execute/make_invoices")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="month"' in html and 'name="count"' in html and csrf_of(page)
    described = bob.get("/_tasks/execute/make_invoices?format=json").json
    assert [f["name"] for f in described["fields"]] == ["month", "count", "secret"]
    assert described["fields"][1]["required"] is True and described["csrf_token"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_anonymous_gets_401_and_nothing_is_queued(anon, queue, method):
    response = anon.open("/_tasks/execute/make_invoices", method=method, data={"month": "x", "count": "1"})
    assert response.status_code == 401 and 'href="/login?next=' in response.get_data(as_text=True)
    assert queue.pending == [] and runs() == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_task_is_404(bob, method):
    assert bob.open("/_tasks/execute/nope", method=method).status_code == 404
    assert bob.get("/_tasks/execute").status_code == 404


def test_a_user_who_may_not_run_the_task_gets_403_and_nothing_is_queued(bob, queue):
    assert bob.get("/_tasks/execute/purge").status_code == 403
    token = csrf_of(bob.get("/_tasks/execute/make_invoices"))  # a valid token of bob's own session
    response = bob.post("/_tasks/execute/purge", data={"csrf_token": token})
    assert response.status_code == 403 and queue.pending == [] and runs() == []


@pytest.mark.parametrize("token", [None, "forged", "other-session"])
def test_missing_or_wrong_csrf_token_is_400_and_nothing_is_queued(app, bob, queue, token):
    bob.get("/_tasks/execute/make_invoices")
    data = {"month": "2026-10", "count": "3"}
    if token == "forged":
        data["csrf_token"] = "IjAwMDAi.aaaa.bbbb"
    elif token == "other-session":
        data["csrf_token"] = csrf_of(client_as(app, "bob").get("/_tasks/execute/make_invoices"))
    response = bob.post("/_tasks/execute/make_invoices", data=data)
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert queue.pending == [] and runs() == []


def test_invalid_input_shows_the_form_again_with_its_errors(bob, queue):
    token = csrf_of(bob.get("/_tasks/execute/make_invoices"))
    response = bob.post("/_tasks/execute/make_invoices", data={"month": "2026-10", "count": "99", "csrf_token": token})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Number must be between 1 and 10." in html and 'value="2026-10"' in html and csrf_of(response)
    assert queue.pending == [] and runs() == []


def test_a_valid_submission_queues_a_run_that_the_page_shows_until_it_finishes(bob, queue):
    token = csrf_of(bob.get("/_tasks/execute/make_invoices"))
    response = bob.post("/_tasks/execute/make_invoices",
                        data={"month": "2026-10", "count": "3", "secret": "hunter2", "csrf_token": token})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/_tasks/execute/make_invoices?run=")
    assert CALLS == [] and len(queue.pending) == 1  # queued, not run in the request

    (run,) = runs()
    assert run["status"] == "queued" and run["user"] == "bob"
    assert run["data_summary"] == "month='2026-10', count=3, secret='***'"  # passwords never stored
    page = bob.get(location)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'class="badge queued"' in html and 'http-equiv="refresh"' in html

    queue.run_pending()
    assert CALLS == [("make_invoices", {"month": "2026-10", "count": 3, "secret": "hunter2"}, "bob")]
    html = bob.get(location).get_data(as_text=True)
    assert 'class="badge done"' in html and 'http-equiv="refresh"' not in html
    assert bob.get(location + "&format=json").json["run"]["status"] == "done"


def test_json_clients_can_read_the_form_and_submit_it(bob, queue):
    described = bob.get("/_tasks/execute/make_invoices", headers={"Accept": "application/json"}).json
    response = bob.post("/_tasks/execute/make_invoices", headers={"Accept": "application/json"},
                        json={"month": "2026-11", "count": 2, "csrf_token": described["csrf_token"]})
    assert response.status_code == 202
    assert response.json["run"]["status"] == "queued" and response.json["watch"].startswith("/_tasks/execute/")
    bad = bob.post("/_tasks/execute/make_invoices", headers={"Accept": "application/json"},
                   json={"month": "", "count": 2, "csrf_token": described["csrf_token"]})
    assert bad.status_code == 422 and "month" in bad.json["errors"]
    queue.run_pending()
    assert CALLS == [("make_invoices", {"month": "2026-11", "count": 2, "secret": None}, "bob")]


def test_a_task_without_input_needs_only_the_csrf_token(ann, queue):
    page = ann.get("/_tasks/execute/purge")
    assert "This task needs no input." in page.get_data(as_text=True)
    assert ann.post("/_tasks/execute/purge", data={"csrf_token": csrf_of(page)}).status_code == 303
    queue.run_pending()
    assert CALLS == [("purge", None, "ann")]


def test_a_run_is_shown_to_its_user_and_admins_only(app, bob, ann, queue):
    token = csrf_of(bob.get("/_tasks/execute/make_invoices"))
    location = bob.post("/_tasks/execute/make_invoices",
                        data={"month": "2026-10", "count": "1", "csrf_token": token}).headers["Location"]
    assert client_as(app, "cy").get(location).status_code == 404
    assert ann.get(location).status_code == 200
    assert bob.get("/_tasks/execute/make_invoices?run=" + "0" * 32).status_code == 404


# --- the dashboard ----------------------------------------------------------------------------------

PAGES = ["/_tasks/admin", "/_tasks/admin/periodic", "/_tasks/admin/queryiters", "/_tasks/admin/failed",
         "/_tasks/admin/runs"]


@pytest.mark.parametrize("path", PAGES)
def test_dashboard_pages_are_for_admins_only(anon, bob, ann, path):
    assert anon.get(path).status_code == 401
    assert bob.get(path).status_code == 403
    assert anon.get(path + "?format=json").json["status"] == 401
    page = ann.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert ann.get(path + "?format=json").mimetype == "application/json"


def test_task_routes_are_not_blocked_by_csrf(bob, queue):
    """Signed task requests carry no CSRF token and must still run (checked per form, not globally)."""
    with bob.application.test_request_context():
        sometimes_doomed("fine")
    queue.run_pending()
    assert CALLS == [("sometimes_doomed", "fine", None)]


def _dead_letter(queue, token: str) -> str:
    DOOMED.add(token)
    sometimes_doomed(token)
    queue.run_pending(raise_errors=False)
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    return str(letter.key.id)


def test_failed_tasks_are_listed_and_retried_with_a_fresh_signature(app, ann, bob, queue):
    with app.test_request_context():
        letter_id = _dead_letter(queue, "retry-me")
    page = ann.get("/_tasks/admin/failed")
    html = page.get_data(as_text=True)
    assert "PermanentTaskFailure: doomed retry-me" in html and "sometimes_doomed(&#39;retry-me&#39;)" in html
    listed = ann.get("/_tasks/admin/failed?format=json").json["failed"]
    assert [(f["id"], f["attempts"], f["path"]) for f in listed] == [(letter_id, 1, "/_tasks/deferred")]
    token = csrf_of(page)

    assert ann.post(f"/_tasks/admin/failed/{letter_id}/retry").status_code == 400  # no CSRF token
    assert bob.post(f"/_tasks/admin/failed/{letter_id}/retry", data={"csrf_token": token}).status_code == 403
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1 and queue.pending == []

    response = ann.post(f"/_tasks/admin/failed/{letter_id}/retry", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/admin/failed"
    assert db.Query(DEAD_LETTER_KIND).run() == [] and len(queue.pending) == 1
    assert "queued again" in ann.get("/_tasks/admin/failed").get_data(as_text=True)
    CALLS.clear()
    queue.run_pending()  # verified by the handler like any task: the new signature is valid
    assert CALLS == [("sometimes_doomed", "retry-me", None)]

    again = ann.post(f"/_tasks/admin/failed/{letter_id}/retry", data={"csrf_token": token},
                     headers={"Accept": "application/json"})
    assert again.json == {"ok": True, "changed": False, "message": f"Task {letter_id} was already handled."}
    assert queue.pending == []


def test_failed_tasks_can_be_discarded(app, ann, queue):
    with app.test_request_context():
        letter_id = _dead_letter(queue, "discard-me")
    token = csrf_of(ann.get("/_tasks/admin/failed"))
    assert ann.post(f"/_tasks/admin/failed/{letter_id}/discard", data={"csrf_token": token}).status_code == 303
    assert db.Query(DEAD_LETTER_KIND).run() == [] and queue.pending == []
    assert ann.post("/_tasks/admin/failed/abc/discard", data={"csrf_token": token}).status_code == 400
    assert ann.post(f"/_tasks/admin/failed/{letter_id}/explode", data={"csrf_token": token}).status_code == 404


def test_query_iterator_runs_show_progress_and_can_be_stopped_and_resumed(app, ann, bob, queue):
    db.put([_thing(i) for i in range(1, 8)])
    with app.test_request_context():
        run_id = Counter.startIterOnQuery(db.Query("thing"))
    page = ann.get("/_tasks/admin/queryiters")
    html = page.get_data(as_text=True)
    assert '<progress class="determinate" max="7" value="0"' in html  # the total counted at the start
    assert 'http-equiv="refresh"' in html and "/stop" in html
    token = csrf_of(page)

    assert bob.post(f"/_tasks/admin/queryiters/{run_id}/stop", data={"csrf_token": token}).status_code == 403
    assert ann.post(f"/_tasks/admin/queryiters/{run_id}/stop").status_code == 400
    assert ann.post(f"/_tasks/admin/queryiters/{run_id}/stop", data={"csrf_token": token}).status_code == 303
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["status"] == "stopped" and run["processed"] == 0
    queue.run_pending()  # the queued step finds the run stopped and does nothing
    assert [c for c in CALLS if c[0] == "count"] == []
    assert "/resume" in ann.get("/_tasks/admin/queryiters").get_data(as_text=True)

    assert ann.post(f"/_tasks/admin/queryiters/{run_id}/resume", data={"csrf_token": token}).status_code == 303
    queue.run_pending()
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["status"] == "finished" and run["processed"] == 7 and run["rate"] > 0
    html = ann.get("/_tasks/admin/queryiters").get_data(as_text=True)
    assert 'class="progress finished"' in html and 'http-equiv="refresh"' not in html
    assert ann.post("/_tasks/admin/queryiters/nope/stop", data={"csrf_token": token}).status_code == 404


def test_the_overview_and_runs_pages_show_callable_runs(ann, queue):
    token = csrf_of(ann.get("/_tasks/execute/purge"))
    ann.post("/_tasks/execute/purge", data={"csrf_token": token})
    html = ann.get("/_tasks/admin/runs").get_data(as_text=True)
    assert "Purge caches" in html and 'class="badge queued"' in html and 'http-equiv="refresh"' in html
    queue.run_pending()
    overview = ann.get("/_tasks/admin?format=json").json
    assert [r["status"] for r in overview["runs"]] == ["done"] and overview["failed_total"] == 0


def test_periodic_tasks_show_their_schedule_and_last_success(app, ann, queue):
    from core.app import runtime_of

    before = ann.get("/_tasks/admin/periodic?format=json").json["periodic"]
    row = next(r for r in before if r["task"].endswith(".tidy"))
    assert row["cron"] == "default" and row["schedule"] and row["last_success"] is None
    with app.test_request_context():
        run_cron(runtime_of(app), "default")
    queue.run_pending()
    assert ("tidy", None, None) in CALLS
    after = ann.get("/_tasks/admin/periodic?format=json").json["periodic"]
    row = next(r for r in after if r["task"].endswith(".tidy"))
    assert row["last_success"] is not None and row["last_error"] is None
    html = ann.get("/_tasks/admin/periodic").get_data(as_text=True)
    assert "test_views.tidy" in html and row["schedule"] in html


def _thing(number: int) -> db.Entity:
    entity = db.Entity(db.key("thing", number))
    entity["n"] = number
    return entity


def test_a_sharded_run_shows_each_shards_progress_and_stops_and_resumes_as_one(app, ann, queue, monkeypatch):
    db.put([_thing(i) for i in range(1, 21)])
    monkeypatch.setattr(db_query, "scatter_sample", lambda query, size: None)  # exact halves: 1-10, 11-20
    with app.test_request_context():
        run_id = Counter.startIterOnQuery(db.Query("thing"), shards=2)
    queue.run_pending(max_tasks=3)  # shard 0 twice, shard 1 once: 3 entities per step
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    by_shard = {shard["index"]: (shard["processed"], shard["status"]) for shard in run["shards"]}
    assert by_shard == {0: (6, "running"), 1: (3, "running")}
    assert run["processed"] == 9 and run["total"] == 20 and run["percent"] == 45.0
    page = ann.get("/_tasks/admin/queryiters")
    html = page.get_data(as_text=True)
    assert '<li data-shard="0">shard 0: 6 running</li>' in html
    assert '<progress class="determinate" max="20" value="9"' in html

    token = csrf_of(page)
    assert ann.post(f"/_tasks/admin/queryiters/{run_id}/stop", data={"csrf_token": token}).status_code == 303
    queue.run_pending()  # both shards' queued steps find the run stopped
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["status"] == "stopped" and run["processed"] == 9
    assert ann.post(f"/_tasks/admin/queryiters/{run_id}/resume", data={"csrf_token": token}).status_code == 303
    queue.run_pending()
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["status"] == "finished" and run["processed"] == 20
    assert {shard["status"] for shard in run["shards"]} == {"done"}
    assert sorted(c[1] for c in CALLS if c[0] == "count") == list(range(1, 21))


# --- ids that cannot be keys ----------------------------------------------------------------------

#: Ids no Datastore key can have: over the 1,500-byte limit (in bytes, not characters), reserved, empty.
IMPOSSIBLE_IDS = ["x" * 1600, "é" * 800, "__key__"]


@pytest.mark.parametrize("bad", IMPOSSIBLE_IDS)
@pytest.mark.parametrize("action", ["queryiters/{}/stop", "queryiters/{}/resume", "failed/{}/retry",
                                    "failed/{}/discard", "tasks/{}/cancel", "tasks/{}/retry"])
def test_every_admin_action_refuses_an_id_that_cannot_be_a_key_with_a_400(ann, action, bad):
    token = csrf_of(ann.get("/_tasks/execute/purge"))
    response = ann.post("/_tasks/admin/" + action.format(bad), data={"csrf_token": token})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "malformed" in response.get_data(as_text=True).lower()


@pytest.mark.parametrize("bad", ["x" * 1600, "é" * 800, "__key__", ""])
def test_a_run_page_refuses_a_run_id_that_cannot_be_a_key(bob, bad):
    response = bob.get(f"/_tasks/execute/make_invoices?run={bad}")
    # An empty run parameter is the form page itself.
    assert response.status_code == (200 if bad == "" else 400)
