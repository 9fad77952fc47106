"""The dashboard's Tasks page in Chromium against gunicorn on the local queue.

Screenshots go to ``test-artifacts/admin/`` (ignored by git).
"""
from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

import requests
from playwright.sync_api import Page, expect

from core import db
from core.admin.records import RECORD_KIND
from core.tasks.executor import DEAD_LETTER_KIND
from tests.e2e.conftest import wait_for
from tests.e2e.test_admin_browser import browser, new_page, shot, sign_in  # noqa: F401 - fixtures

__all__ = ["browser", "new_page"]


def record(task_id: str, state: str, ended: datetime.datetime | None, **values: Any) -> db.Entity:
    """A task record as the task pipeline writes it."""
    enqueued = (ended or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(seconds=2)
    entity = db.Entity(db.key(RECORD_KIND, task_id), exclude_from_indexes=("traceback", "result"))
    entity.update({"state": state, "target": "example.jobs.render", "queue": "default", "kind": "deferred",
                   "attempts": 1, "enqueued_at": enqueued, "started_at": enqueued, "ended_at": ended,
                   "updated_at": ended or enqueued, "error": None, "result": None, "tags": [],
                   "description": "", "group": None})
    entity.update(values)
    return entity


def admin_page(new_page: Any, url: str) -> Page:
    page = new_page()
    page.goto(f"{url}/user/login")  # seeds the demo accounts
    sign_in(page, url, "admin", "admin-demo")
    return page


def test_the_tasks_page_filters_and_pages_through_tracked_tasks(live_stack, new_page):
    now = datetime.datetime.now(datetime.UTC)
    db.put([record(f"task-{n:02d}", "failed" if n % 3 == 0 else "succeeded",
                   now - datetime.timedelta(hours=2, minutes=70 - n),
                   queue="mail" if n % 2 else "default", error="RuntimeError: boom" if n % 3 == 0 else None,
                   result=None if n % 3 == 0 else f'{{"n": {n}}}')
            for n in range(70)])
    page = admin_page(new_page, live_stack.url)
    page.click("nav >> text=Tracked tasks")
    expect(page.locator("#filters")).to_be_visible()
    # Only these records: the app's own tracked tasks (startup runs) may be listed too.
    page.fill("input[name=target]", "example.jobs.render")
    page.click("#filters button[type=submit]")
    rows = page.locator("#tasks-list tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-task", "task-69")
    expect(page.locator("nav.pager")).to_contain_text("Page 1")
    shot(page, "20-tasks-page-1")
    page.click("nav.pager >> text=Next")
    expect(rows).to_have_count(20)
    expect(rows.first).to_have_attribute("data-task", "task-19")
    expect(rows.last).to_have_attribute("data-task", "task-00")
    expect(page.locator("nav.pager a[rel=next]")).to_have_count(0)
    page.click("nav.pager >> text=Previous")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-task", "task-69")

    page.select_option("select[name=state]", "failed")
    page.fill("input[name=queue]", "mail")
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"state=failed.*target=example.jobs.render"))
    ids = [n for n in range(70) if n % 3 == 0 and n % 2]
    expect(rows).to_have_count(len(ids))
    expect(rows.first).to_have_attribute("data-task", f"task-{ids[-1]:02d}")
    expect(rows.first.locator(".error")).to_have_text("RuntimeError: boom")
    expect(rows.first.locator(".badge")).to_have_text("failed")
    expect(rows.first.locator("button", has_text="Retry")).to_be_visible()
    shot(page, "21-tasks-filtered")


def test_the_chart_counts_the_last_hour_and_a_dead_letter_shows_its_queue(probe_stack, new_page):
    now = datetime.datetime.now(datetime.UTC)
    three, seven = now - datetime.timedelta(minutes=3), now - datetime.timedelta(minutes=7)
    db.put([record("ok-1", "succeeded", three), record("ok-2", "succeeded", three),
            record("ok-3", "succeeded", seven, attempts=4), record("bad-1", "failed", seven, attempts=2),
            record("old", "succeeded", now - datetime.timedelta(hours=2))])
    token = uuid.uuid4().hex  # an untracked task that fails for good: only its dead letter counts it
    requests.post(probe_stack.url + "/probes/permanent", data={"token": token}).raise_for_status()
    letter = wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), message="the dead letter")[0]

    page = admin_page(new_page, probe_stack.url)
    page.goto(f"{probe_stack.url}/_tasks/admin/tasks")
    chart = page.locator("svg#activity-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("g.minute")).to_have_count(60)

    def minute(moment: datetime.datetime) -> Any:
        return chart.locator(f"g.minute[data-minute='{moment:%H:%M}']")

    expect(minute(three)).to_have_attribute("data-succeeded", "2")
    expect(minute(seven)).to_have_attribute("data-succeeded", "1")
    expect(minute(seven)).to_have_attribute("data-failed", "1")
    expect(minute(seven)).to_have_attribute("data-retried", "2")
    letter_minute = chart.locator(f"g.minute[data-minute='{letter['created']:%H:%M}']")
    assert int(letter_minute.get_attribute("data-failed") or 0) >= 1
    for series in ("succeeded", "failed", "retried"):  # the legend sums the bars (the app's own tasks count too)
        per_minute = [int(v) for v in chart.locator("g.minute").evaluate_all(
            f"nodes => nodes.map(n => n.dataset.{series})")]
        expect(page.locator(f"#total-{series}")).to_have_text(str(sum(per_minute)))
        assert chart.locator(f"rect.{series}").count() == sum(1 for n in per_minute if n)
    shot(page, "22-activity-chart")

    page.click("nav >> text=Failed tasks")
    row = page.locator(f"#failed tr[data-letter='{letter.key.id}']")
    expect(row.locator(".queue")).to_have_text("default")
    expect(row.locator(".attempts")).to_have_text("1")
    expect(row).to_contain_text("never works")


def test_the_local_queue_depth_shows_waiting_tasks_per_queue(probe_stack, new_page):
    page = admin_page(new_page, probe_stack.url)
    probe_stack.stop_dispatcher()
    token = uuid.uuid4().hex
    requests.post(probe_stack.url + "/probes/slow", data={"token": token, "count": "4", "seconds": "0"}
                  ).raise_for_status()
    page.goto(f"{probe_stack.url}/_tasks/admin/tasks")
    default = page.locator("#queue-depth tr[data-queue='default']")
    expect(default.locator(".due")).to_have_text("4")
    expect(default.locator(".failed")).to_have_text("0")
    shot(page, "23-queue-depth")
    probe_stack.start_dispatcher()
    wait_for(lambda: len(db.Query("probe_run").filter("token =", token).run()) == 4, message="the four tasks")
    page.reload()
    expect(default.locator(".due")).to_have_text("0")


def test_a_task_reporting_progress_shows_a_moving_bar(make_stack, new_page):
    stack = make_stack(app_module="tests.e2e.app:app")
    token = uuid.uuid4().hex
    task_id = requests.post(f"{stack.url}/probes/progressing", data={"token": token, "count": "100",
                                                                    "seconds": "0.1"}).json()["id"]
    page = admin_page(new_page, stack.url)

    def bar_value() -> int:
        page.goto(f"{stack.url}/_tasks/admin/tasks?target=tests.e2e.app.progressing")
        bar = page.locator(f'#tasks-list tr[data-task="{task_id}"] progress')
        return int(bar.get_attribute("value") or 0) if bar.count() else -1

    first = wait_for(lambda: (value := bar_value()) > 0 and value, timeout=60, message="a progress bar")
    row = page.locator(f'#tasks-list tr[data-task="{task_id}"]')
    expect(row.locator(".progress-text")).to_contain_text("of 100")
    shot(page, "25-task-progress")
    later = wait_for(lambda: (value := bar_value()) > first and value, timeout=30, message="the bar to move")
    assert first < later <= 100
    wait_for(lambda: db.Query("probe_run").filter("token =", token).run(), timeout=60, message="the task's end")
