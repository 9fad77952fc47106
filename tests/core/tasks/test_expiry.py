"""Expiry (``expires=`` / ``_expires``) through the in-process queue, the real handler and the test clock."""
from __future__ import annotations

import datetime
import json

import pytest

from core import db
from core.admin import TaskAdmin
from core.tasks import TaskHandle, callDeferred
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.errors import TaskExpired
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.records import EXPIRED, SUCCEEDED
from core.tasks.runtime import get_runtime
from tests.conftest import TaskQueue
from tests.core.admin.test_views import Users, client_as

RUNS: list[str] = []
TEN_MINUTES = datetime.timedelta(minutes=10)


@callDeferred(expires=TEN_MINUTES)
def notify(text: str) -> None:
    RUNS.append(text)


@callDeferred(expires=60, track=True)
def tracked_notify(text: str) -> str:
    RUNS.append(text)
    return text


@callDeferred
def plain(text: str) -> None:
    RUNS.append(text)


@callDeferred(expires=120, track=True)
def flaky(text: str) -> None:
    RUNS.append(text)
    raise RuntimeError("down")


def bad_expiry() -> None:
    """Decorated only in a test, with an expiry it refuses."""


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def test_a_task_due_before_its_expiry_runs(app, task_queue):
    notify("soon", _countdown=9 * 60)
    task_queue.advance(9 * 60)
    assert RUNS == ["soon"]


def test_an_untracked_task_not_started_in_time_is_dropped_and_counted_as_skipped(app, task_queue):
    runtime = get_runtime()
    runtime.metrics.flush_every = 3600.0
    notify("late")
    task_queue.clock.advance(10 * 60)
    (outcome,) = task_queue.run_pending()
    assert RUNS == [], "an expired task never runs"
    assert outcome.status == 200 and outcome.error is None and "expired" in (outcome.skipped or "")
    assert db.Query(DEAD_LETTER_KIND).run() == [], "not a dead letter"
    stats = runtime.metrics.take()[("default", f"{__name__}.notify")]
    assert (stats.skipped, stats.succeeded, stats.retried, stats.dead_letters) == (1, 0, 0, 0)


def test_a_tracked_task_past_its_expiry_ends_expired_on_its_record(app, task_queue):
    handle = tracked_notify("late")
    task_queue.clock.advance(61)
    task_queue.run_pending()
    assert RUNS == []
    record = handle.status()
    assert record.state is EXPIRED and record.ended_at is not None and record.attempts == 0
    with pytest.raises(TaskExpired):
        handle.result(timeout=1)
    assert not handle.cancel(), "an expired task has ended"


def test_a_tracked_task_in_time_succeeds(app, task_queue):
    handle = tracked_notify("in time")
    task_queue.advance(59)
    assert handle.status().state is SUCCEEDED and RUNS == ["in time"]


def test_the_call_option_sets_or_overrides_the_expiry(app, task_queue):
    plain("no expiry", _expires=30)
    notify("longer", _expires=datetime.timedelta(hours=1))
    at = task_queue.clock.now() + datetime.timedelta(seconds=20)
    tracked = plain("moment", _expires=at, _track=True)
    task_queue.clock.advance(31 * 60)
    task_queue.run_pending()
    assert RUNS == ["longer"]
    assert TaskHandle.fetch(tracked.id).status().state is EXPIRED


def test_a_retry_after_the_expiry_is_not_run(app, task_queue):
    handle = flaky("x")
    task_queue.run_pending(raise_errors=False)
    assert RUNS == ["x"] and handle.status().state.value == "retrying"
    task_queue.clock.advance(121)
    outcomes = task_queue.run_pending(raise_errors=False)
    assert RUNS == ["x"], "the queue's retry came after the expiry"
    assert [o.status for o in outcomes] == [200] and handle.status().state is EXPIRED
    assert db.Query(DEAD_LETTER_KIND).run() == []


def test_bad_expiries_fail_at_the_decorator_or_the_call(app):
    with pytest.raises(ValueError, match="bad_expiry: expires must be"):
        callDeferred(expires=-1)(bad_expiry)
    with pytest.raises(ValueError, match="timezone-aware"):
        plain("x", _expires=datetime.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not before it expires"):
        notify("x", _countdown=11 * 60)


def test_the_tracked_tasks_page_shows_an_expired_task(make_app):
    app = make_app({"_tasks/admin": TaskAdmin}, users=Users())
    queue = TaskQueue(app)
    handle = tracked_notify("late")
    queue.clock.advance(61)
    queue.run_pending()
    ann = client_as(app, "ann")
    listed = ann.get("/_tasks/admin/tasks?format=json&state=expired").json["tasks"]
    assert [(t["id"], t["state"]) for t in listed] == [(handle.id, "expired")]
    html = ann.get("/_tasks/admin/tasks").get_data(as_text=True)
    assert f'<tr data-task="{handle.id}" data-state="expired"' in html
    assert '<option value="expired">expired</option>' in html


@pytest.mark.parametrize("expires", ["soon", True, {"at": 1}, 1e999])
def test_a_well_signed_task_with_a_malformed_expiry_is_a_dead_letter(client, expires):
    body = json.dumps({"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0,
                       "payload": {"target": notify.target.name, "args": ["x"], "kwargs": {}, "expires": expires}})
    path = "/_tasks/deferred"
    response = client.post(path, data=body, headers={
        SIGNATURE_HEADER: sign_request("test-task-secret", "POST", path, body.encode())})
    assert response.status_code == 200 and RUNS == []
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["error"].startswith("PayloadError") and "'expires'" in letter["error"]
