"""The Tasks page, cursor pages, the activity chart and the queue depth, through the Flask client on the emulator.

Task records are written here as the task pipeline writes them (kind ``_tasks_record``, key name =
task id), so every filter and column is checked against known data.
"""
from __future__ import annotations

import datetime
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core import db
from core.admin import TaskAdmin, chart
from core.admin.records import RECORD_KIND
from core.tasks import PermanentTaskFailure, callDeferred
from core.tasks.callable import RUN_KIND
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.queryiter import QueryIter
from core.tasks.queryiter.runs import RUN_KIND as QUERY_RUN_KIND
from core.tasks.registry import isolated_registry
from tests.conftest import TaskQueue
from tests.core.admin.test_views import Users, client_as, csrf_of

CALLS: list[str] = []
#: Tokens whose call fails permanently the first time (a dead letter that a retry can fix).
DOOMED: set[str] = set()
NOW = datetime.datetime.now(datetime.UTC)


@callDeferred
def fragile(token: str) -> None:
    CALLS.append(token)
    if token in DOOMED:
        DOOMED.discard(token)
        raise PermanentTaskFailure(f"no luck for {token}")


class Touch(QueryIter):
    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        CALLS.append(f"touch {entry.key.id}")


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    DOOMED.clear()


@pytest.fixture
def app(make_app):
    with isolated_registry() as registry:
        pass
    registry.deferred.add(fragile.target.name, fragile.target)
    registry.query_iters.add(Touch.iter_id, Touch)
    return make_app({"_tasks/admin": TaskAdmin}, registry=registry, users=Users())


@pytest.fixture
def ann(app):
    return client_as(app, "ann")


@pytest.fixture
def bob(app):
    return client_as(app, "bob")


@pytest.fixture
def queue(app) -> TaskQueue:
    return TaskQueue(app)


def record(task_id: str, state: str = "succeeded", *, minutes_ago: float = 1, **values: Any) -> db.Entity:
    """A task record as the pipeline writes it, enqueued ``minutes_ago`` and (if finished) ended 1 s later."""
    enqueued = NOW - datetime.timedelta(minutes=minutes_ago)
    entity = db.Entity(db.key(RECORD_KIND, task_id), exclude_from_indexes=("traceback", "result"))
    ended = enqueued + datetime.timedelta(seconds=1.5) if state in ("succeeded", "failed", "cancelled") else None
    entity.update({"state": state, "target": "app.jobs.render", "queue": "default", "kind": "deferred",
                   "attempts": 1, "enqueued_at": enqueued, "started_at": enqueued + datetime.timedelta(seconds=0.5),
                   "ended_at": ended, "updated_at": ended or enqueued, "error": None, "error_type": None,
                   "traceback": None, "result": None, "tags": [], "description": "", "group": None,
                   "expires_at": NOW + datetime.timedelta(days=7)})
    entity.update(values)
    return entity


def listed(client, query: str = "") -> list[str]:
    response = client.get(f"/_tasks/admin/tasks?format=json{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return [t["id"] for t in response.json["tasks"]]


# --- the list and its filters --------------------------------------------------------------------

def test_the_tasks_page_lists_tracked_tasks_newest_first_with_their_facts(ann):
    db.put([
        record("t-ok", result='{"total": 42}', minutes_ago=3),
        record("t-bad", "failed", attempts=3, error="ValueError: bad month", error_type="ValueError",
               traceback="Traceback (most recent call last):\n  ...", minutes_ago=2),
        record("t-wait", "queued", started_at=None, minutes_ago=1, tags=["nightly"], description="Render <b>it</b>"),
    ])
    assert listed(ann) == ["t-wait", "t-bad", "t-ok"]
    html = ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    rows = dict(re.findall(r'<tr data-task="([^"]+)" data-state="([a-z]+)"', html))
    assert rows == {"t-wait": "queued", "t-bad": "failed", "t-ok": "succeeded"}
    assert '{&#34;total&#34;: 42}' in html  # the result, escaped
    assert "ValueError: bad month" in html and "Traceback (most recent call last)" in html
    assert "Render &lt;b&gt;it&lt;/b&gt;" in html and '<span class="tag">nightly</span>' in html
    assert '<td class="num attempts">3</td>' in html and '<td class="num duration">1.0 s</td>' in html
    ok = next(t for t in ann.get("/_tasks/admin/tasks?format=json").json["tasks"] if t["id"] == "t-ok")
    assert ok["duration"] == 1.0 and ok["attempts"] == 1 and ok["result"] == '{"total": 42}'


def test_filters_by_state_queue_target_and_tag_combine(ann):
    db.put([
        record("a", "succeeded", queue="default", target="app.jobs.render", tags=["x"], minutes_ago=5),
        record("b", "failed", queue="default", target="app.jobs.render", tags=["x", "y"], minutes_ago=4),
        record("c", "failed", queue="mail", target="app.mail.send", tags=["y"], minutes_ago=3),
        record("d", "queued", queue="mail", target="app.jobs.render", minutes_ago=2),
    ])
    assert listed(ann, "&state=failed") == ["c", "b"]
    assert listed(ann, "&queue=mail") == ["d", "c"]
    assert listed(ann, "&target=app.jobs.render") == ["d", "b", "a"]
    assert listed(ann, "&tag=y") == ["c", "b"]
    assert listed(ann, "&state=failed&queue=default&tag=x") == ["b"]
    assert listed(ann, "&state=cancelled") == []
    html = ann.get("/_tasks/admin/tasks?state=failed&queue=mail").get_data(as_text=True)
    assert '<option value="failed" selected>' in html and 'name="queue" value="mail"' in html
    assert "No tracked tasks match" in ann.get("/_tasks/admin/tasks?state=cancelled").get_data(as_text=True)


@pytest.mark.parametrize("query", ["state=bogus", "queue=no%20spaces", "target=" + "x" * 600, "tag=a%0Ab",
                                   "cursor=%21%21", "cursor=QUJD", "cursor=aGVsbG8gd29ybGQh", "back=%3D%3D,%21",
                                   "cursor=Q2hjU0VXb0JjSElNQ3hJRmRHaHBibWNZelFrTUdBQWdBUT09&page=x"])
def test_bad_filters_and_page_links_are_400_never_500(ann, query):
    db.put([record("a")])
    response = ann.get(f"/_tasks/admin/tasks?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_a_record_with_strange_values_never_breaks_the_page(ann):
    db.put([record("weird", "exploded", attempts=2**62, result="1" * 10_000, error=b"\xff\xfe bytes",
                   started_at="yesterday", ended_at=12, tags="not-a-list", target=None, queue=None,
                   description=["a", 1], enqueued_at=NOW),
            record("odd", attempts="three", tags=[1, None, "ok"], error_type=3.5, minutes_ago=2)])
    response = ann.get("/_tasks/admin/tasks")
    assert response.status_code == 200
    weird, odd = ann.get("/_tasks/admin/tasks?format=json").json["tasks"]
    assert weird["state"] == "unknown" and weird["attempts"] is None and weird["duration"] is None
    assert len(weird["result"]) == 300 and weird["tags"] == [] and weird["error"] == "\ufffd\ufffd bytes"
    assert odd["attempts"] is None and odd["tags"] == ["1", "", "ok"]


def test_only_admins_see_the_tasks_page(app, bob):
    assert client_as(app, None).get("/_tasks/admin/tasks").status_code == 401
    assert bob.get("/_tasks/admin/tasks").status_code == 403


# --- pages -----------------------------------------------------------------------------------

def walk(client, first: str) -> tuple[list[list[str]], list[str]]:
    """Follow "next" links from ``first``; the ids of each page and the pages' URLs."""
    pages, urls, url = [], [], first
    while url:
        urls.append(url)
        body = client.get(url + ("&" if "?" in url else "?") + "format=json").json
        key = next(k for k in ("tasks", "failed", "runs", "queryiters") if k in body)
        pages.append([row["id"] for row in body[key]])
        url = body["pages"]["next"]
    return pages, urls


def test_the_tasks_list_pages_by_cursor_with_next_and_previous(ann):
    db.put([record(f"t{n:03d}", minutes_ago=200 - n) for n in range(120)])  # t119 is the newest
    pages, urls = walk(ann, "/_tasks/admin/tasks")
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [i for p in pages for i in p] == [f"t{n:03d}" for n in range(119, -1, -1)]  # all, once, in order
    third = ann.get(urls[2] + "&format=json").json["pages"]
    assert third["page"] == 3 and third["next"] is None
    back = ann.get(third["previous"] + "&format=json").json
    assert [t["id"] for t in back["tasks"]] == pages[1] and back["pages"]["page"] == 2
    first = ann.get(back["pages"]["previous"] + ("&" if "?" in back["pages"]["previous"] else "?") + "format=json").json
    assert [t["id"] for t in first["tasks"]] == pages[0] and first["pages"]["previous"] is None
    assert "format=json" in urls[1]  # JSON clients' links keep asking for JSON
    html = ann.get(urls[1].replace("format=json", "")).get_data(as_text=True)
    assert 'rel="next"' in html and 'rel="prev"' in html and "Page 2" in html


def test_filters_are_kept_on_page_links(ann):
    db.put([record(f"f{n:03d}", "failed" if n % 2 else "succeeded", minutes_ago=200 - n) for n in range(130)])
    pages, urls = walk(ann, "/_tasks/admin/tasks?state=failed")
    assert [len(p) for p in pages] == [50, 15] and all(int(i[1:]) % 2 for p in pages for i in p)
    assert parse_qs(urlsplit(urls[1]).query)["state"] == ["failed"]


def _letter(n: int) -> db.Entity:
    entity = db.Entity(db.key(DEAD_LETTER_KIND, n + 1))
    entity.update({"task_id": f"x{n}", "kind": "deferred", "target": "app.t", "queue": "mail",
                   "path": "/_tasks/deferred", "error": "RuntimeError: x", "attempts": 3,
                   "created": NOW - datetime.timedelta(hours=3, seconds=n), "payload": b"{}"})
    return entity


def _callable_run(n: int) -> db.Entity:
    entity = db.Entity(db.key(RUN_KIND, f"r{n:03d}"))
    entity.update({"task": "purge", "task_name": "Purge", "status": "done", "attempts": 1,
                   "created": NOW - datetime.timedelta(seconds=n)})
    return entity


def _query_run(n: int) -> db.Entity:
    entity = db.Entity(db.key(QUERY_RUN_KIND, f"q{n:03d}"))
    started = NOW - datetime.timedelta(hours=1, seconds=n)
    entity.update({"class": "app.Reindex", "kind": "thing", "queue": "default", "status": "finished",
                   "generation": 0, "step": 1, "processed": 5, "errors": 0, "cursor": None, "started": started,
                   "updated": started, "finished": started, "last_error": None, "total": 5})
    return entity


@pytest.mark.parametrize("page, make", [("failed", _letter), ("runs", _callable_run), ("queryiters", _query_run)])
def test_every_admin_list_pages_instead_of_cutting_at_a_hundred(ann, page, make):
    db.put([make(n) for n in range(130)])
    pages, _ = walk(ann, f"/_tasks/admin/{page}")
    assert [len(p) for p in pages] == [50, 50, 30]
    assert len({i for p in pages for i in p}) == 130


def test_an_unreadable_query_run_record_is_listed_not_a_500(ann):
    broken = _query_run(1)
    del broken["class"]
    broken["processed"] = "many"
    db.put([_query_run(0), broken])
    runs = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert [(r["id"], r["status"]) for r in runs] == [("q000", "finished"), ("q001", "unknown")]
    assert ann.get("/_tasks/admin/queryiters").status_code == 200


def test_the_failed_page_shows_queue_and_attempts_of_a_dead_letter(ann):
    db.put([_letter(0)])
    html = ann.get("/_tasks/admin/failed").get_data(as_text=True)
    assert '<span class="queue">mail</span>' in html and '<td class="num attempts">3</td>' in html
    assert ann.get("/_tasks/admin?format=json").json["failed_total"] == 1


# --- query iterator progress -------------------------------------------------------------------

def test_a_query_run_counts_its_total_at_the_start_and_shows_rate_and_eta(app, ann, queue):
    for n in range(1, 8):
        db.put([db.Entity(db.key("thing", n))])
    with app.test_request_context():
        run_id = Touch.startIterOnQuery(db.Query("thing").limit(5))
    assert db.get(db.key(QUERY_RUN_KIND, run_id))["total"] == 5  # the query's limit caps the count
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert (run["total"], run["processed"], run["percent"], run["eta"]) == (5, 0, 0.0, None)

    record = db.get(db.key(QUERY_RUN_KIND, run_id))  # as a chunk leaves it: 2 of 5 after 10 s
    record.update({"processed": 2, "started": datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=10)})
    db.put([record])
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["percent"] == 40.0 and 0.15 < run["rate"] < 0.21 and 14 < run["eta"] < 21
    html = ann.get("/_tasks/admin/queryiters").get_data(as_text=True)
    assert '<progress class="determinate" max="5" value="2"' in html
    assert '<span class="muted total"> of 5</span>' in html

    record.update({"processed": 0, "started": datetime.datetime.now(datetime.UTC)})
    db.put([record])
    queue.run_pending()
    (run,) = ann.get("/_tasks/admin/queryiters?format=json").json["queryiters"]
    assert run["status"] == "finished" and run["percent"] == 100.0 and run["eta"] is None
    assert sorted(c for c in CALLS if c.startswith("touch")) == [f"touch {n}" for n in range(1, 6)]


# --- retry and cancel ----------------------------------------------------------------------------

def test_retry_sends_a_failed_task_again_from_its_dead_letter(app, ann, bob, queue):
    DOOMED.add("doomed-1")
    with app.test_request_context():
        handle = fragile("doomed-1")
    queue.run_pending(raise_errors=False)
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["task_id"] == handle.id
    db.put([record(handle.id, "failed", error="PermanentTaskFailure: no luck", target=fragile.target.name)])
    page = ann.get("/_tasks/admin/tasks")
    token = csrf_of(page)
    assert f'action="/_tasks/admin/tasks/{handle.id}/retry"' in page.get_data(as_text=True)

    url = f"/_tasks/admin/tasks/{handle.id}/retry"
    assert ann.post(url).status_code == 400  # no CSRF token
    assert bob.post(url, data={"csrf_token": token}).status_code == 403
    assert queue.pending == []
    response = ann.post(url, data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/admin/tasks"
    assert "queued again" in ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert db.Query(DEAD_LETTER_KIND).run() == [] and len(queue.pending) == 1
    assert db.get(db.key(RECORD_KIND, handle.id))["state"] == "queued"  # else the handler would refuse it
    CALLS.clear()
    queue.run_pending(raise_errors=False)
    assert CALLS == ["doomed-1"]

    again = ann.post(url, data={"csrf_token": token}, headers={"Accept": "application/json"}).json
    assert again == {"ok": True, "message": f"Task {handle.id} has no failed request stored to send again."}
    assert ann.post("/_tasks/admin/tasks/unknown-id/retry", data={"csrf_token": token}).status_code == 404
    assert ann.post("/_tasks/admin/tasks/bad%20id/retry", data={"csrf_token": token}).status_code == 400
    assert ann.post(f"/_tasks/admin/tasks/{handle.id}/explode", data={"csrf_token": token}).status_code == 404


def test_finished_tasks_offer_no_cancel_and_unfinished_ones_no_retry(ann):
    db.put([record("done"), record("waiting", "queued", started_at=None)])
    html = ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert "/tasks/done/cancel" not in html and "/tasks/waiting/retry" not in html
    assert "/tasks/done/retry" not in html


def test_the_page_and_its_cancel_read_a_record_in_the_old_format(ann):
    # As the code before TaskRecord wrote it: string states, no queue_task, eta or lease_until.
    db.put([record("old-wait", "retrying", attempts=2, ended_at=None, legacy_note="kept"),
            record("old-stopping", "cancelled", ended_at=None)])  # cancelled while its attempt runs
    rows = {t["id"]: t for t in ann.get("/_tasks/admin/tasks?format=json").json["tasks"]}
    waiting = rows["old-wait"]
    assert (waiting["state"], waiting["attempts"], waiting["cancellable"], waiting["retryable"]) == (
        "retrying", 2, True, False)
    assert rows["old-stopping"]["state"] == "cancelled" and rows["old-stopping"]["cancellable"] is False
    token = csrf_of(ann.get("/_tasks/admin/tasks"))
    response = ann.post("/_tasks/admin/tasks/old-wait/cancel", data={"csrf_token": token},
                        headers={"Accept": "application/json"})
    assert response.json == {"ok": True, "message": "Task old-wait cancelled."}
    stored = db.get(db.key(RECORD_KIND, "old-wait"))
    assert stored["state"] == "cancelled" and stored["ended_at"] is not None and stored["legacy_note"] == "kept"


# --- the chart -----------------------------------------------------------------------------------

def minute_of(moment: datetime.datetime) -> str:
    return moment.strftime("%H:%M")


def test_the_chart_counts_the_last_hour_per_minute(ann):
    now = datetime.datetime.now(datetime.UTC)
    at = {k: now - datetime.timedelta(minutes=k) for k in (2, 5, 30, 90)}
    entities = [
        record("s1", ended_at=at[5], updated_at=at[5]), record("s2", ended_at=at[5], updated_at=at[5]),
        record("s3", ended_at=at[2], updated_at=at[2], attempts=3),  # succeeded after retries
        record("f1", "failed", ended_at=at[30], updated_at=at[30], attempts=2),
        record("r1", "retrying", ended_at=None, updated_at=at[2], attempts=2),
        record("old", ended_at=at[90], updated_at=at[90]),  # outside the hour
    ]
    tracked_letter, untracked_letter, old_letter = _letter(1), _letter(2), _letter(3)
    tracked_letter.update({"task_id": "f1", "created": at[30]})  # the failed record's own letter: counted once
    untracked_letter.update({"task_id": "untracked", "created": at[2]})
    old_letter.update({"created": at[90]})
    db.put(entities + [tracked_letter, untracked_letter, old_letter])

    activity = chart.last_hour()
    counts = {minute_of(m.start): (m.succeeded, m.failed, m.retried) for m in activity.minutes}
    assert len(activity.minutes) == 60 and not activity.partial
    assert counts[minute_of(at[5])] == (2, 0, 0)
    assert counts[minute_of(at[2])] == (1, 1, 2)
    assert counts[minute_of(at[30])] == (0, 1, 1)
    assert sum(sum(c) for c in counts.values()) == 3 + 2 + 3

    html = ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert f'data-minute="{minute_of(at[2])}" data-succeeded="1" data-failed="1" data-retried="2"' in svg
    assert svg.count('class="minute"') == 60 and "<script" not in html and "http" not in svg.replace(
        "http://www.w3.org/2000/svg", "")
    assert re.search(r'id="total-succeeded">3<', html) and re.search(r'id="total-failed">2<', html)
    assert re.search(r'id="total-retried">3<', html)


# --- the local queue's depth -------------------------------------------------------------------

def test_the_local_queue_depth_is_shown_per_queue(make_app, settings, datastore, tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: mail\n")  # the local queue refuses queues its table lacks
    local = settings.__class__(**{**settings.__dict__, "tasks_backend": "local", "queue_yaml": queue_yaml})
    with isolated_registry() as registry:
        pass
    registry.deferred.add(fragile.target.name, fragile.target)
    app = make_app({"_tasks/admin": TaskAdmin}, registry=registry, users=Users(), settings=local)
    with app.test_request_context():
        for n in range(3):
            fragile(f"now-{n}")
        fragile("later", _countdown=3600)
        fragile("mail", _queue="mail")
    admin = client_as(app, "ann")
    depth = {q["queue"]: q for q in admin.get("/_tasks/admin/tasks?format=json").json["depth"]}
    assert depth["default"] == {"queue": "default", "due": 3, "scheduled": 1, "leased": 0, "failed": 0}
    assert depth["mail"]["due"] == 1
    html = admin.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert re.search(r'<tr data-queue="default"><td>default</td><td class="num due">3</td>'
                     r'<td class="num scheduled">1</td>', html)


def test_no_depth_is_shown_for_other_backends(ann):
    assert ann.get("/_tasks/admin/tasks?format=json").json["depth"] is None
    assert 'id="queue-depth"' not in ann.get("/_tasks/admin/tasks").get_data(as_text=True)


def test_the_cancel_button_cancels_a_tracked_task_before_it_runs(app, ann, bob, queue):
    with app.test_request_context():
        handle = fragile("cancel-me", _track=True)
        finished = fragile("run-me", _track=True)
    page = ann.get("/_tasks/admin/tasks")
    html = page.get_data(as_text=True)
    assert f'action="/_tasks/admin/tasks/{handle.id}/cancel"' in html
    token = csrf_of(page)
    url = f"/_tasks/admin/tasks/{handle.id}/cancel"
    assert ann.post(url).status_code == 400  # no CSRF token
    assert bob.post(url, data={"csrf_token": token}).status_code == 403
    assert db.get(db.key(RECORD_KIND, handle.id))["state"] == "queued"
    response = ann.post(url, data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/admin/tasks"
    assert f"Task {handle.id} cancelled." in ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert db.get(db.key(RECORD_KIND, handle.id))["state"] == "cancelled"
    queue.run_pending()
    assert CALLS == ["run-me"]  # the cancelled one never ran
    html = ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert f"/tasks/{handle.id}/cancel" not in html and f"/tasks/{finished.id}/cancel" not in html
    again = ann.post(url, data={"csrf_token": token}, headers={"Accept": "application/json"}).json
    assert again == {"ok": True, "message": f"Task {handle.id} had already finished."}
    assert ann.post("/_tasks/admin/tasks/nobody/cancel", data={"csrf_token": token}).status_code == 404
