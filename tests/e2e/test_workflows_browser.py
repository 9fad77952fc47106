"""The dashboard's Groups and chains page in Chromium, against gunicorn on the local queue."""
from __future__ import annotations

import uuid

import requests
from playwright.sync_api import expect

from tests.e2e.test_admin_browser import browser, new_page, shot  # noqa: F401 - fixtures
from tests.e2e.test_tasks_dashboard_browser import admin_page

__all__ = ["browser", "new_page"]


def test_a_running_group_shows_its_progress_until_it_succeeds(make_stack, new_page):
    stack = make_stack(app_module="tests.e2e.app:app")
    token = uuid.uuid4().hex
    response = requests.post(f"{stack.url}/probes/group", data={"token": token, "count": "30", "fail_every": "10"},
                             timeout=60)
    response.raise_for_status()
    group_id = response.json()["id"]
    page = admin_page(new_page, stack.url)
    page.click("nav >> text=Groups and chains")
    row = page.locator(f"#workflow-{group_id}")
    expect(row).to_be_visible()
    expect(row.locator("td").first).to_contain_text("tests.e2e.app.group_member")
    expect(row.locator(".total")).to_have_text("30")
    # The page reloads itself while the group runs; three members fail once and are retried.
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    expect(row.locator(".done")).to_have_text("30")
    expect(row.locator(".failed")).to_have_text("0")
    expect(row.locator(".percent")).to_have_text("100 %")
    expect(row.locator(".progress.finished")).to_be_visible()
    shot(page, "40-workflows-succeeded")
    page.select_option("select[name=kind]", "chain")
    page.click("#workflow-filters button[type=submit]")
    expect(page.locator("#workflows")).to_have_count(0)
    expect(page.get_by_text("No group or chain has been started yet.")).to_be_visible()
