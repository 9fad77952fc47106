"""The operators' pages: queues with their controls, metrics per target, failed tasks in bulk."""
from __future__ import annotations

import re

import pytest

from core.admin import TaskAdmin
from core.tasks import PermanentTaskFailure, callDeferred, deadletters
from tests.core.admin.test_views import Users, client_as, csrf_of

RUNS: list[int] = []


@callDeferred(queue="background")
def chore(n: int) -> None:
    RUNS.append(n)


@callDeferred
def doomed(n: int) -> None:
    raise PermanentTaskFailure("partner down")


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def _csrf(client, url: str) -> str:
    return csrf_of(client.get(url))


@pytest.fixture
def app(make_app):
    return make_app({"_tasks/admin": TaskAdmin}, users=Users())


@pytest.fixture
def client(app):
    return client_as(app, "ann")


def test_the_queues_page_pauses_lists_runs_and_resumes_a_queue(app, client, task_queue) -> None:
    page = client.get("/_tasks/admin/queues")
    assert page.status_code == 200 and 'data-queue="background"' in page.get_data(as_text=True)
    token = _csrf(client, "/_tasks/admin/queues")
    assert client.post("/_tasks/admin/queues/background/pause", data={"csrf_token": token}).status_code == 303
    chore(1)
    chore(2, _countdown=3600)
    task_queue.run_pending()
    assert RUNS == []
    listing = client.get("/_tasks/admin/queues/background").get_data(as_text=True)
    assert listing.count("<tr data-task=") == 2 and listing.count("chore") == 2 and "paused" in listing
    later = [t for t in task_queue.pending if t.due is not None][0]
    client.post("/_tasks/admin/queues/background/run", data={"csrf_token": token, "task": later.id})
    client.post("/_tasks/admin/queues/background/resume", data={"csrf_token": token})
    task_queue.run_pending()
    assert sorted(RUNS) == [1, 2]
    assert client.post("/_tasks/admin/queues/nope/pause", data={"csrf_token": token}).status_code == 404
    assert client.post("/_tasks/admin/queues/background/pause").status_code == 400          # no CSRF token
    assert client.get("/_tasks/admin/queues/" + "x" * 1600).status_code == 400


def test_the_metrics_page_shows_runs_and_failures_per_target(app, client, task_queue) -> None:
    for n in range(3):
        chore(n)
    doomed(1)
    task_queue.run_pending(raise_errors=False)
    app.extensions["core"].metrics.flush()
    html = client.get("/_tasks/admin/metrics").get_data(as_text=True)
    row = re.search(r'<tr data-target="tests.core.admin.test_ops_pages.chore">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'class="num runs".*?> 3</td>', row, re.S)
    doomed_row = re.search(r'<tr data-target="tests.core.admin.test_ops_pages.doomed">(.*?)</tr>', html, re.S).group(1)
    assert "100 %" in doomed_row


def test_failed_tasks_are_retried_in_bulk_from_the_page(app, client, task_queue) -> None:
    for n in range(5):
        doomed(n)
    chore(9)
    task_queue.run_pending(raise_errors=False)
    assert deadletters.count() == 5
    token = _csrf(client, "/_tasks/admin/failed")
    response = client.post("/_tasks/admin/failed/bulk/discard",
                           data={"csrf_token": token, "target": "tests.core.admin.test_ops_pages.doomed",
                                 "error_type": "PermanentTaskFailure"})
    assert response.status_code == 303 and deadletters.count() == 0
    bad = client.post("/_tasks/admin/failed/bulk/retry", data={"csrf_token": token, "older_than": "soon"})
    assert bad.status_code == 400
