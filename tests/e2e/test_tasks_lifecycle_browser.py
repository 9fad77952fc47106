"""The Tasks page over tasks the pipeline really tracks, in Chromium on gunicorn and the local queue.

Screenshots go to ``test-artifacts/admin/`` (ignored by git).
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from core import db
from core.tasks import TaskHandle
from core.tasks.executor import DEAD_LETTER_KIND
from tests.e2e.conftest import probe_runs, wait_for
from tests.e2e.test_admin_browser import browser, new_page, shot, sign_in  # noqa: F401 - fixtures

__all__ = ["browser", "new_page"]

QUEUE_YAML = """
queue:
- name: default
  rate: 500/s
  retry_parameters:
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.5
- name: limited
  rate: 500/s
  retry_parameters:
    task_retry_limit: 2
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.2
"""


@pytest.fixture
def stack(make_stack, tmp_path: Path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text(QUEUE_YAML)
    return make_stack(app_module="tests.e2e.app:app", queue_yaml=queue_yaml)


def _post(stack, route: str, **data: str) -> dict:
    response = requests.post(stack.url + route, data=data, timeout=30)
    response.raise_for_status()
    return response.json()


def admin(new_page, url: str):
    page = new_page()
    page.goto(f"{url}/user/login")  # seeds the demo accounts
    sign_in(page, url, "admin", "admin-demo")
    return page


def test_the_cancel_button_cancels_a_queued_task(stack, new_page):
    token = uuid.uuid4().hex
    task_id = _post(stack, "/probes/tracked", token=token, countdown="60")["id"]
    done_id = _post(stack, "/probes/tracked", token=token)["id"]
    wait_for(lambda: TaskHandle.fetch(done_id).status().state == "succeeded", message="the other task to end")
    page = admin(new_page, stack.url)
    page.goto(f"{stack.url}/_tasks/admin/tasks")
    row = page.locator(f"#tasks-list tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("queued")
    done = page.locator(f"#tasks-list tr[data-task='{done_id}']")
    expect(done.locator(".badge")).to_have_text("succeeded")
    expect(done.locator("code.result")).to_have_text("42")
    expect(done.locator("button")).to_have_count(0)  # nothing to cancel or retry
    depth = page.locator("#queue-depth tr[data-queue='default']")
    expect(depth.locator(".scheduled")).to_have_text("1")
    shot(page, "24-tasks-cancel-before")
    row.locator("button", has_text="Cancel").click()
    expect(page.locator(".flash")).to_contain_text(f"Task {task_id} cancelled.")
    expect(row.locator(".badge")).to_have_text("cancelled")
    expect(row.locator("button")).to_have_count(0)
    expect(depth.locator(".scheduled")).to_have_text("0")  # taken off the local queue, not only marked
    assert TaskHandle.fetch(task_id).status().state == "cancelled"
    assert len(probe_runs(token)) == 1  # the other task's run only
    shot(page, "25-tasks-cancelled")


def test_a_task_over_its_queue_limit_is_a_dead_letter_on_the_dashboard_and_retried_from_the_tasks_page(
        stack, new_page):
    token = uuid.uuid4().hex
    task_id = _post(stack, "/probes/failing", token=token)["id"]
    letter = wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), timeout=120, message="the dead letter")[0]
    wait_for(lambda: TaskHandle.fetch(task_id).status().state == "failed", timeout=60, message="the record to end")
    page = admin(new_page, stack.url)
    page.goto(f"{stack.url}/_tasks/admin/failed")
    row = page.locator(f"#failed tr[data-letter='{letter.key.id}']")
    expect(row.locator(".queue")).to_have_text("limited")
    expect(row.locator(".attempts")).to_have_text("3")
    expect(row).to_contain_text("limit of queue 'limited'")
    shot(page, "26-failed-queue-limit")

    page.goto(f"{stack.url}/_tasks/admin/tasks?state=failed")
    task = page.locator(f"#tasks-list tr[data-task='{task_id}']")
    expect(task.locator(".attempts")).to_have_text("3")
    expect(task.locator(".error")).to_contain_text("RuntimeError: failing on purpose, always")
    assert len(probe_runs(token)) == 3
    task.locator("button", has_text="Retry").click()
    expect(page.locator(".flash")).to_contain_text(f"Task {task_id} queued again.")
    wait_for(lambda: len(probe_runs(token)) > 3, timeout=120, message="the retried task to run again")


def test_tagged_tasks_show_their_tags_and_description_and_a_tag_filter_keeps_only_theirs(stack, new_page):
    token = uuid.uuid4().hex
    ids = _post(stack, "/probes/tagged", token=token)
    for task_id in ids.values():
        wait_for(lambda task_id=task_id: TaskHandle.fetch(task_id).status().state == "succeeded",
                 message="the tagged tasks to run")
    page = admin(new_page, stack.url)
    page.goto(f"{stack.url}/_tasks/admin/tasks")
    billing = page.locator(f"#tasks-list tr[data-task='{ids['billing']}']")
    reports = page.locator(f"#tasks-list tr[data-task='{ids['reports']}']")
    expect(billing.locator(".badge")).to_have_text("succeeded")
    expect(billing.locator(".tag")).to_have_text(["billing", "nightly"])
    expect(billing).to_contain_text("Send the invoice emails")
    expect(reports.locator(".tag")).to_have_text(["reports"])
    expect(reports).to_contain_text("Build the monthly report")
    shot(page, "27-tasks-tagged")

    page.fill("#filters input[name=tag]", "billing")
    page.locator("#filters button", has_text="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]tag=billing(&|$)"))
    expect(page.locator("#tasks-list tbody tr")).to_have_count(1)
    expect(billing.locator(".tag")).to_have_text(["billing", "nightly"])
    expect(reports).to_have_count(0)
    page.fill("#filters input[name=tag]", "reports")
    page.locator("#filters button", has_text="Filter").click()
    expect(page.locator("#tasks-list tbody tr")).to_have_count(1)
    expect(reports).to_contain_text("Build the monthly report")
    page.fill("#filters input[name=tag]", "nothing-has-this")
    page.locator("#filters button", has_text="Filter").click()
    expect(page.locator("#no-tasks")).to_have_text("No tracked tasks match these filters.")
    shot(page, "28-tasks-tag-filter")
