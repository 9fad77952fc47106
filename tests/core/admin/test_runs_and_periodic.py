"""What a person notices on the admin pages: a retried run's attempts, what a run started, the
periodic page's "every ping" and its "run now" button, and the range message of a number field."""
from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from core import current, db
from core.admin import TaskAdmin
from core.tasks import PermanentTaskFailure
from core.tasks.callable import CallableTask, CallableTaskBase
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.queryiter import QueryIter
from core.tasks.registry import isolated_registry
from tests.conftest import TaskQueue
from tests.core.admin.test_views import Users, client_as, csrf_of

CALLS: list[str] = []
#: While set, the next run of FailsOnce fails permanently (and clears it).
FAIL_NEXT: set[str] = set()


class FailsOnce(CallableTaskBase):
    key = "fails_once"
    name = "Fails once"

    def execute(self) -> None:  # type: ignore[override]
        CALLS.append("fails_once")
        if FAIL_NEXT:
            FAIL_NEXT.clear()
            raise PermanentTaskFailure("on purpose")


class Walker(QueryIter):
    """Walks ``step`` entities, one per chunk, so a run stays running until the queue is drained."""

    maxEntriesPerChunk = 1

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        CALLS.append(f"walk {entry.key.id}")


class StartsWalker(CallableTaskBase):
    key = "starts_walker"
    name = "Start a walk"

    def execute(self) -> None:  # type: ignore[override]
        Walker.startIterOnQuery(db.Query("step"))


def hourly() -> None:
    CALLS.append(f"hourly as {current.user.get()}")


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    FAIL_NEXT.clear()


@pytest.fixture
def app(make_app):
    with isolated_registry() as registry:
        CallableTask(FailsOnce)
        CallableTask(StartsWalker)
        PeriodicTask(interval=datetime.timedelta(hours=1))(hourly)
    registry.query_iters.add(Walker.iter_id, Walker)
    return make_app({"_tasks/admin": TaskAdmin}, registry=registry, users=Users())


@pytest.fixture
def queue(app) -> TaskQueue:
    return TaskQueue(app)


@pytest.fixture
def ann(app):
    return client_as(app, "ann")


def start(client, key: str) -> str:
    token = csrf_of(client.get(f"/_tasks/execute/{key}"))
    response = client.post(f"/_tasks/execute/{key}", data={"csrf_token": token})
    assert response.status_code == 303
    return response.headers["Location"]


# --- attempts of a retried run ------------------------------------------------------------------

def test_a_retried_dead_letter_counts_as_the_runs_next_attempt(ann, queue):
    FAIL_NEXT.add("yes")
    run_page = start(ann, "fails_once")
    queue.run_pending(raise_errors=False)
    (run,) = ann.get("/_tasks/admin/runs?format=json").json["runs"]
    assert (run["status"], run["attempts"]) == ("failed", 1)
    (letter,) = db.Query(DEAD_LETTER_KIND).run()

    token = csrf_of(ann.get("/_tasks/admin/failed"))
    assert ann.post(f"/_tasks/admin/failed/{letter.key.id}/retry", data={"csrf_token": token}).status_code == 303
    queue.run_pending()
    assert CALLS == ["fails_once", "fails_once"]
    (run,) = ann.get("/_tasks/admin/runs?format=json").json["runs"]
    assert (run["status"], run["attempts"]) == ("done", 2)
    html = ann.get("/_tasks/admin/runs").get_data(as_text=True)
    assert re.search(r'class="badge done">done</span></td>\s*<td class="num">2</td>', html)
    assert "<dt>Attempts</dt><dd>2</dd>" in ann.get(run_page).get_data(as_text=True)


# --- a run that starts other work -------------------------------------------------------------------

def test_a_run_that_starts_a_query_iterator_is_done_links_to_it_and_follows_it(ann, queue):
    db.put([db.Entity(db.key("step", n)) for n in (1, 2, 3)])
    run_page = start(ann, "starts_walker")
    queue.run_pending(max_tasks=1)  # the callable run only; the walk's first step is queued
    (run,) = ann.get("/_tasks/admin/runs?format=json").json["runs"]
    assert run["status"] == "done"
    (work,) = run["started_work"]
    assert (work["kind"], work["label"]) == ("queryiter", "Walker") and re.fullmatch(r"[0-9a-f]{32}", work["id"])

    html = ann.get(run_page).get_data(as_text=True)
    assert 'class="badge done"' in html and "it started the work above" in html
    assert f'<a href="/_tasks/admin/queryiters#run-{work["id"]}">Walker run</a>' in html
    assert 'class="badge running"' in html  # watched while it runs; reloads by URL, not by #fragment (a no-op)
    assert f'http-equiv="refresh" content="1; url={run_page}"' in html
    assert f'id="run-{work["id"]}"' in ann.get("/_tasks/admin/queryiters").get_data(as_text=True)

    queue.run_pending()
    assert sorted(c for c in CALLS if c.startswith("walk")) == ["walk 1", "walk 2", "walk 3"]
    html = ann.get(run_page).get_data(as_text=True)
    assert 'class="badge finished"' in html and "3 processed" in html and 'http-equiv="refresh"' not in html


# --- the periodic page ----------------------------------------------------------------------------

def _row(html: str, name_end: str) -> str:
    rows = re.findall(r'<tr data-task="([^"]+)">(.*?)</tr>', html, re.S)
    return next(body for name, body in rows if name.endswith(name_end))


def test_tasks_that_run_on_every_ping_say_so_instead_of_a_past_due_time(ann):
    html = ann.get("/_tasks/admin/periodic").get_data(as_text=True)
    sweep = _row(html, "sweep_outbox_task")
    assert "every ping" in sweep and "due now" not in sweep and "UTC" not in sweep.split("every ping")[0][-200:]
    assert "every ping" not in _row(html, ".hourly")


def test_run_now_queues_the_task_at_once_for_admins_with_a_csrf_token(app, ann, queue):
    name = next(r["name"] for r in ann.get("/_tasks/admin/periodic?format=json").json["periodic"]
                if r["task"].endswith(".hourly"))
    page = ann.get("/_tasks/admin/periodic")
    html = page.get_data(as_text=True)
    assert re.search(rf'action="/_tasks/admin/periodic/run">.*?name="task" value="{re.escape(name)}">'
                     r'<button type="submit">Run now</button>', html)
    token = csrf_of(page)

    assert ann.post("/_tasks/admin/periodic/run", data={"task": name}).status_code == 400
    assert client_as(app, "bob").post("/_tasks/admin/periodic/run",
                                      data={"task": name, "csrf_token": token}).status_code == 403
    assert ann.post("/_tasks/admin/periodic/run", data={"task": "nope", "csrf_token": token}).status_code == 404
    assert queue.pending == []

    response = ann.post("/_tasks/admin/periodic/run", data={"task": name, "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/admin/periodic"
    assert len(queue.pending) == 1
    html = ann.get("/_tasks/admin/periodic").get_data(as_text=True)
    assert "queued to run now" in html and "disabled>Run now" in _row(html, ".hourly")
    again = ann.post("/_tasks/admin/periodic/run", data={"task": name, "csrf_token": token},
                     headers={"Accept": "application/json"})
    assert again.json["changed"] is False and len(queue.pending) == 1  # one run at a time

    queue.run_pending()
    assert CALLS == ["hourly as None"]
    (row,) = [r for r in ann.get("/_tasks/admin/periodic?format=json").json["periodic"] if r["name"] == name]
    assert row["runs"] == 1 and row["pending"] is False and row["last_success"] is not None
    # It ran now although an hourly task that never ran would also have been due: press again, it runs again.
    assert ann.post("/_tasks/admin/periodic/run", data={"task": name, "csrf_token": token}).status_code == 303
    queue.run_pending()
    assert CALLS == ["hourly as None", "hourly as None"]
