"""The task admin pages in a real browser (Debian's chromium via Playwright) against gunicorn on the local queue.

Screenshots go to ``test-artifacts/admin/`` (ignored by git).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from core import db
from core.tasks.callable import RUN_KIND
from core.tasks.executor import DEAD_LETTER_KIND
from example.users import USER_KIND, create_user
from tests.e2e.conftest import wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "admin"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Any]:
    """Pages in separate browser contexts (separate cookies: one signed-in user each)."""
    contexts = []

    def make() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/user/login?next=/_tasks/list")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/_tasks/list")


def test_admin_fills_a_form_badly_then_well_and_watches_the_run_finish(live_stack, new_page):
    url = live_stack.url
    page = new_page()
    page.goto(f"{url}/user/login")
    expect(page.get_by_text("Demo accounts (local only)")).to_be_visible()  # seeded on first view
    sign_in(page, url, "admin", "admin-demo")
    rows = page.locator("#tasks tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("nav")).to_contain_text("Dashboard")
    shot(page, "01-list-admin")

    page.click("text=Generate demo invoices")
    expect(page.locator("h1")).to_have_text("Generate demo invoices")
    page.fill("input[name=month]", "2026-13")
    page.fill("input[name=count]", "3")
    page.click("button[type=submit]")
    expect(page.locator(".field.invalid .errors")).to_contain_text("Use the form YYYY-MM")
    assert page.locator("input[name=month]").input_value() == "2026-13"
    shot(page, "02-form-invalid")
    assert db.Query(RUN_KIND).run() == []

    page.fill("input[name=month]", "2026-09")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/_tasks/execute/generate_invoices\?run=[0-9a-f]{32}$"))
    expect(page.locator("#run-status .badge.done")).to_be_visible()  # the page reloads itself until then
    expect(page.locator("#run")).to_contain_text("month='2026-09', count=3")
    shot(page, "03-run-done")
    invoices = db.Query("invoice").filter("month =", "2026-09").run()
    assert len(invoices) == 3 and {i["created_by"] for i in invoices} == {"admin"}

    page.click("nav >> text=Task runs")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs .badge.done")).to_be_visible()
    page.click("nav >> text=Dashboard")
    expect(page.locator("#failed-total")).to_have_text("0")
    expect(page.locator("main")).to_contain_text("Generate demo invoices")
    shot(page, "04-dashboard")
    page.click("nav >> text=Periodic")
    expect(page.locator("#periodic tbody tr").first).to_be_visible()  # at least the built-in outbox sweep
    shot(page, "05-periodic")


def test_query_iterator_progress_moves_on_the_dashboard(live_stack, new_page):
    url = live_stack.url
    db.put([_invoice(n) for n in range(1, 151)])
    page = new_page()
    page.goto(f"{url}/user/login")
    sign_in(page, url, "admin", "admin-demo")
    page.click("text=Recalculate invoice taxes")
    expect(page.locator("text=This task needs no input.")).to_be_visible()
    page.click("button[type=submit]")
    expect(page.locator("#run-status .badge.done")).to_be_visible()

    # The run page reloads itself while the iteration it started runs: leaving it could be cut off
    # by that reload (ERR_ABORTED), so the dashboard opens in a second tab of the same session.
    page = page.context.new_page()
    page.goto(f"{url}/_tasks/admin/queryiters")
    row = page.locator("#queryiters tbody tr").first
    seen: list[tuple[str, int]] = []

    def progress_seen() -> bool:
        """Reload until the count was seen running mid-way and then higher (or finished)."""
        page.reload()
        status = row.locator(".badge").inner_text()
        processed = int(row.locator("td.processed").inner_text().split()[0])
        midway = status == "running" and 0 < processed < 150
        if midway:  # a determinate bar: the total counted at the start, the value where the run is
            bar = row.locator("progress.determinate")
            assert bar.get_attribute("max") == "150" and bar.get_attribute("value") == str(processed)
            assert "of 150" in row.locator("td.processed").inner_text()
        if midway and not any(s == "running" and 0 < p < 150 for s, p in seen):
            shot(page, "06-queryiter-running")
        if not seen or seen[-1] != (status, processed):
            seen.append((status, processed))
        running = [p for s, p in seen if s == "running" and 0 < p < 150]
        return bool(running) and any(p > running[0] for _, p in seen)

    wait_for(progress_seen, timeout=60, interval=0.05, message="the processed count to move while running")
    expect(row.locator(".badge")).to_have_text("finished", timeout=60_000)
    expect(row.locator("td.processed")).to_have_text("150 of 150")
    expect(row.locator(".progress.finished")).to_be_visible()
    shot(page, "07-queryiter-finished")
    counts = [p for _, p in seen]
    assert counts == sorted(counts), f"the count went backwards: {seen}"
    assert all(i.get("tax") is not None for i in db.Query("invoice").run())


def test_a_dead_letter_is_retried_from_the_dashboard(live_stack, new_page):
    url = live_stack.url
    plain = new_page()
    plain.goto(f"{url}/user/login")
    sign_in(plain, url, "user", "user-demo")
    expect(plain.locator("#tasks tbody tr")).to_have_count(1)  # only what canCall allows
    plain.click("text=Generate demo invoices")
    plain.fill("input[name=month]", "2026-08")
    plain.fill("input[name=count]", "2")

    # The run is queued while the queue is down; its user is deleted before it runs, so the task
    # refuses to run it (canCall is checked again) and it ends as a dead letter.
    live_stack.stop_dispatcher()
    plain.click("button[type=submit]")
    expect(plain.locator("#run-status .badge.queued")).to_be_visible()
    db.delete(db.key(USER_KIND, "user"))
    live_stack.start_dispatcher()
    letter = wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), message="the dead letter")[0]
    assert "may no longer run" in letter["error"]

    create_user("user", "user-demo")  # the user is back: a retry can succeed
    admin = new_page()
    admin.goto(f"{url}/user/login")
    sign_in(admin, url, "admin", "admin-demo")
    admin.goto(f"{url}/_tasks/admin/failed")
    row = admin.locator(f"#failed tr[data-letter='{letter.key.id}']")
    expect(row).to_contain_text("may no longer run this task")
    expect(row).to_contain_text("run_callable_task(")
    shot(admin, "08-failed-tasks")
    row.locator("button", has_text="Retry").click()
    expect(admin.locator(".flash")).to_contain_text("queued again")
    expect(admin.locator("#failed")).to_have_count(0)

    wait_for(lambda: len(db.Query("invoice").filter("month =", "2026-08").run()) == 2, message="the retried run")
    plain.reload()
    expect(plain.locator("#run-status .badge.done")).to_be_visible()
    shot(plain, "09-retried-run-done")


def test_plain_users_and_anonymous_visitors_see_only_what_they_may(live_stack, new_page):
    url = live_stack.url
    create_user("plain", "plain-pass")
    anonymous = new_page()
    anonymous.goto(f"{url}/_tasks/list")
    expect(anonymous.locator("main")).to_contain_text("to see the tasks you may run")
    expect(anonymous.locator("#tasks")).to_have_count(0)
    response = anonymous.goto(f"{url}/_tasks/admin")
    assert response is not None and response.status == 401
    shot(anonymous, "10-anonymous-dashboard")

    plain = new_page()
    sign_in(plain, url, "plain", "plain-pass")
    expect(plain.locator("#tasks tbody tr")).to_have_count(1)
    expect(plain.locator("#tasks")).not_to_contain_text("Recalculate invoice taxes")
    expect(plain.locator("nav")).not_to_contain_text("Dashboard")
    response = plain.goto(f"{url}/_tasks/execute/recalculate_taxes")
    assert response is not None and response.status == 403
    response = plain.goto(f"{url}/_tasks/admin/failed")
    assert response is not None and response.status == 403
    shot(plain, "11-plain-user-forbidden")


def _invoice(number: int) -> db.Entity:
    entity = db.Entity(db.key("invoice", f"2026-07-{number:04d}"))
    entity.update({"month": "2026-07", "year": 2026, "number": number, "customer": f"Customer {number % 7}",
                   "title": f"Invoice {number}", "amount": number * 10})
    return entity
