"""The home page's tour through the Flask client: each button starts what it says, only with a CSRF
token, admin-only steps for admins; and the invoice form's range message."""
from __future__ import annotations

import datetime
import re

import pytest

from core import db
from core.admin.records import RECORD_KIND
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.queryiter.runs import get_run
from example import MODULES, SessionUsers
from example.tour import COUNTDOWN_SECONDS, STEP_KIND, fail_once, run_step
from example.users import create_user
from tests.conftest import TaskQueue
from tests.example.test_users import sign_in, token_of


@pytest.fixture
def app(make_app):
    app = make_app(MODULES, users=SessionUsers())
    create_user("ada", "pw-ada-123")
    create_user("root", "pw-root-123", admin=True)
    return app


@pytest.fixture
def queue(app) -> TaskQueue:
    return TaskQueue(app)


@pytest.fixture
def ada(app):
    client = app.test_client()
    sign_in(client, "ada", "pw-ada-123")
    return client


@pytest.fixture
def root(app):
    client = app.test_client()
    sign_in(client, "root", "pw-root-123")
    return client


def press(client, action: str):
    return client.post(f"/tour/{action}", data={"csrf_token": token_of(client, "/")})


def test_the_home_page_invites_anonymous_visitors_to_sign_in(app):
    html = app.test_client().get("/").get_data(as_text=True)
    assert 'id="signed-out"' in html and "Sign in to try it" in html and 'action="/tour/' not in html


def test_a_plain_user_sees_which_steps_are_for_administrators(ada):
    html = ada.get("/").get_data(as_text=True)
    assert 'id="signed-in"' in html and "Signed in as <b>ada</b>" in html
    assert 'action="/tour/defer"' in html and 'action="/tour/countdown"' in html
    assert 'action="/tour/fail"' not in html and html.count("administrators only") == 3


@pytest.mark.parametrize("action", ["defer", "countdown", "fail", "iterate", "periodic"])
def test_every_button_wants_a_signed_in_user_and_the_csrf_token(app, ada, queue, action):
    assert app.test_client().post(f"/tour/{action}").status_code == 401
    assert ada.post(f"/tour/{action}", data={"csrf_token": "forged"}).status_code in (400, 403)
    assert queue.pending == [] and db.Query(STEP_KIND).run() == []


@pytest.mark.parametrize("action", ["fail", "iterate", "periodic"])
def test_admin_steps_are_refused_to_plain_users(ada, queue, action):
    assert press(ada, action).status_code == 403 and queue.pending == []


def test_a_deferred_call_is_queued_then_runs_as_its_caller(ada, queue):
    response = press(ada, "defer")
    assert response.status_code == 303 and re.fullmatch(r"/tour/watch/[0-9a-f]{32}", response.headers["Location"])
    watch = response.headers["Location"]
    html = ada.get(watch).get_data(as_text=True)
    assert 'class="badge queued"' in html and 'http-equiv="refresh"' in html and len(queue.pending) == 1
    queue.run_pending()
    html = ada.get(watch).get_data(as_text=True)
    assert 'class="badge done"' in html and "as ada" in html and 'http-equiv="refresh"' not in html


def test_the_deferred_call_is_a_tracked_task_shown_on_the_dashboard(root, ada, queue):
    watch = press(root, "defer").headers["Location"]
    task_id = db.get(db.key(STEP_KIND, watch.rsplit("/", 1)[1]))["task_id"]
    html = root.get(watch).get_data(as_text=True)
    link = f'href="/_tasks/admin/tasks?target=example.tour.run_step#task-{task_id}"'
    assert 'id="step-task"><span class="badge queued">' in html and link in html
    queue.run_pending()
    html = root.get(watch).get_data(as_text=True)
    assert 'id="step-task"><span class="badge succeeded">' in html and 'http-equiv="refresh"' not in html
    tasks = root.get("/_tasks/admin/tasks?target=example.tour.run_step").get_data(as_text=True)
    row = tasks[tasks.index(f'id="task-{task_id}"'):].split("</tr>", 1)[0]
    assert 'class="badge succeeded"' in row and '<span class="tag">tour</span>' in row
    assert "The tour&#39;s deferred call" in row
    # The call's own code ran before its record says so: the page reloads until the record has ended.
    record = db.get(db.key(RECORD_KIND, task_id))
    record["state"] = "running"
    db.put(record)
    html = root.get(watch).get_data(as_text=True)
    assert 'class="badge running"' in html and 'http-equiv="refresh"' in html
    # A plain user sees the task's state but has no dashboard to be sent to.
    html = ada.get(press(ada, "defer").headers["Location"]).get_data(as_text=True)
    assert 'id="step-task"><span class="badge queued">' in html and "step-dashboard" not in html


def test_a_countdown_holds_the_call_back(ada, queue):
    before = datetime.datetime.now(datetime.UTC)
    watch = press(ada, "countdown").headers["Location"]
    (task,) = queue.pending
    assert task.request.eta >= before + datetime.timedelta(seconds=COUNTDOWN_SECONDS - 1)
    assert re.search(r'id="step-due">\(in \d+ s\)', ada.get(watch).get_data(as_text=True))


def test_a_failing_task_becomes_a_dead_letter_and_runs_when_retried(root, queue):
    watch = press(root, "fail").headers["Location"]
    queue.run_pending(raise_errors=False)
    html = root.get(watch).get_data(as_text=True)
    assert 'class="badge failed"' in html and 'href="/_tasks/admin/failed"' in html
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert "failed on purpose for the tour" in letter["error"]
    token = token_of(root, "/_tasks/admin/failed")
    assert root.post(f"/_tasks/admin/failed/{letter.key.id}/retry", data={"csrf_token": token}).status_code == 303
    queue.run_pending()
    html = root.get(watch).get_data(as_text=True)
    assert 'class="badge done"' in html and "The retried task ran" in html


def test_a_query_iteration_starts_over_demo_invoices(root, queue):
    response = press(root, "iterate")
    run_id = re.fullmatch(r"/_tasks/admin/queryiters#run-([0-9a-f]{32})", response.headers["Location"])[1]
    assert get_run(run_id).status == "running"
    assert len(db.Query("invoice").keys_only().run(limit=1000)) == 300


def test_run_group_default_now_queues_its_tasks(root, queue):
    response = press(root, "periodic")
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/admin/periodic"
    assert "periodic task(s) of group default now" in root.get("/_tasks/admin/periodic").get_data(as_text=True)
    assert len(queue.pending) >= 2  # the outbox sweep and the statistics refresh at least


def test_how_many_zero_gets_the_range_message(ada, queue):
    token = token_of(ada, "/_tasks/execute/generate_invoices")
    for count, message in (("0", "Number must be between 1 and 500."), ("501", "Number must be between 1 and 500."),
                           ("", "This field is required.")):
        response = ada.post("/_tasks/execute/generate_invoices",
                            data={"month": "2026-10", "count": count, "csrf_token": token})
        html = response.get_data(as_text=True)
        assert response.status_code == 422 and message in html, count
        if count:
            assert "This field is required." not in html
    assert queue.pending == []


@pytest.mark.parametrize("token", ["", "Z" * 32])
def test_a_signed_step_with_a_token_the_tour_never_made_is_a_dead_letter(app, queue, token):
    for target in (run_step, fail_once):
        target(token)
    queue.run_pending(raise_errors=False, max_attempts=5)
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 2 and all(letter["attempts"] == 1 for letter in letters)
    assert all("not a tour step token" in letter["error"] for letter in letters)


def test_watching_a_token_of_the_wrong_alphabet_is_404(app, ada):
    assert ada.get("/tour/watch/" + "Z" * 32).status_code == 404
