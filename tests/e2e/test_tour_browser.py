"""The home page's guided tour, walked by a new user in a real browser (Debian's chromium via
Playwright) against gunicorn on the local queue: sign in, press every button, see what it did on
the page it lands on, sign out.

Every page is also looked at 375 px (a phone) and 1280 px wide: nothing may be wider than the
window and the header's sign-out stays on screen. Screenshots go to ``test-artifacts/tour/``
(ignored by git).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from core import db
from tests.e2e.test_admin_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture

__all__ = ["browser"]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "tour"
WIDTHS = (375, 1280)


@pytest.fixture
def page(browser: Browser, live_stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.requested = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requested.append(request.url))  # type: ignore[attr-defined]
    yield page
    context.close()


def look(page: Page, name: str) -> None:
    """The page at each width: fits the window, header readable; a screenshot of each.

    Called only on pages that no longer reload themselves, so nothing navigates meanwhile.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function("w => window.innerWidth === w", arg=width)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        scroll_width, inner_width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        wide = [] if scroll_width <= inner_width else page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1)"
            ".slice(-6).map(e => `${e.tagName}.${e.className}: ${(e.innerText || '').slice(0, 60)}`)")
        assert scroll_width <= inner_width, f"{name} is {scroll_width} px wide at {width} px; too wide: {wide}"
        for selector in ("nav a.brand", "main h1"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (name, selector, width)
        signout = page.locator("nav form.signout button")
        if signout.count():
            box = signout.bounding_box()
            assert box is not None and box["x"] + box["width"] <= width, f"{name}: sign-out off screen at {width}"
        font = page.evaluate("parseFloat(getComputedStyle(document.querySelector('main p, main td, main dd'))"
                             ".fontSize)")
        assert font >= 13, f"{name}: text of {font} px at {width} px"
        narrow = page.evaluate("[...document.querySelectorAll('main td')].filter(td => td.innerText.trim().length > 12"
                               " && td.getBoundingClientRect().width < 72).map(td => td.innerText.slice(0, 40))")
        assert narrow == [], f"{name}: table cells squeezed at {width} px: {narrow}"
    page.set_viewport_size({"width": 1280, "height": 900})


def home(page: Page, url: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#tour")).to_be_visible()


def test_a_new_user_walks_the_tour(live_stack, page):
    url = live_stack.url

    # Anonymous: the tour invites to sign in.
    home(page, url)
    expect(page.locator("#signed-out")).to_contain_text("You are not signed in")
    expect(page.locator("#tour .card")).to_have_count(6)
    expect(page.locator("nav")).to_contain_text("Sign in")
    look(page, "01-home-anonymous")

    page.locator("#signed-out a", has_text="Sign in").click()
    expect(page.locator("h1")).to_have_text("Sign in")
    expect(page.get_by_text("Demo accounts (local only)")).to_be_visible()
    look(page, "02-sign-in")
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", "admin-demo")
    page.locator("main button", has_text="Sign in").click()
    expect(page).to_have_url(url + "/")
    expect(page.locator("#signed-in")).to_contain_text("Signed in as admin (administrator")
    expect(page.locator("nav .who")).to_contain_text("Signed in as admin · administrator")
    expect(page.locator("nav form.signout button")).to_have_text("Sign out")
    look(page, "03-home-signed-in")

    # 1. A deferred call: its page reloads until the task has run and its record says succeeded,
    # then links to the task's row on the dashboard's Tasks page.
    page.locator("#step-defer button", has_text="Defer a call").click()
    expect(page).to_have_url(re.compile(r"/tour/watch/[0-9a-f]{32}$"))
    expect(page.locator("#step-task .badge")).to_have_text("succeeded")
    expect(page.locator("head meta[http-equiv=refresh]")).to_have_count(0)
    expect(page.locator("#step-status .badge.done")).to_be_visible()
    expect(page.locator("#step-ran")).to_contain_text("in worker process")
    expect(page.locator("#step-ran")).to_contain_text("as admin")
    expect(page.locator("#step-result")).to_contain_text("after this site had answered your request")
    look(page, "04-deferred-call-ran")
    page.locator("#step-dashboard", has_text="See it on the dashboard's Tasks page").click()
    expect(page).to_have_url(re.compile(r"/_tasks/admin/tasks\?target=example\.tour\.run_step#task-[0-9a-f]{32}$"))
    task = page.locator(f"#task-{page.url.rsplit('#task-', 1)[1]}")
    expect(task.locator(".badge")).to_have_text("succeeded")
    expect(task).to_contain_text("The tour's deferred call")
    expect(task.locator(".tag")).to_have_text(["tour"])
    expect(page.locator("#tasks-list tbody tr")).to_have_count(1)
    look(page, "04b-deferred-call-on-the-tasks-page")

    # 2. A countdown: queued and due later, then run.
    home(page, url)
    page.locator("#step-countdown button").click()
    expect(page.locator("#step-status .badge.queued")).to_be_visible()
    expect(page.locator("#step-due")).to_contain_text(re.compile(r"in \d+ s"))
    expect(page.locator("#step-status .badge.done")).to_be_visible(timeout=45_000)
    expect(page.locator("#step-result")).to_contain_text("once its countdown was over")
    look(page, "05-countdown-ran")

    # 3. A query iteration: the dashboard's query iterator page shows it running, then finished.
    home(page, url)
    page.locator("#step-iterate button").click()
    expect(page).to_have_url(re.compile(r"/_tasks/admin/queryiters#run-[0-9a-f]{32}$"))
    run_id = page.url.rsplit("#run-", 1)[1]
    expect(page.locator(".flash")).to_contain_text("Started a query iterator run over the invoices")
    row = page.locator(f"#run-{run_id}")
    expect(row).to_contain_text("InvoiceTaxes")
    expect(row.locator(".badge")).to_have_text("finished", timeout=90_000)
    expect(row.locator("td.processed")).to_have_text("300 of 300")  # the total counted at the start
    expect(row.locator(".progress.finished")).to_be_visible()
    look(page, "06-query-iteration-finished")
    assert all(i.get("tax") is not None for i in db.Query("invoice").run())

    # 4. A task that fails: a dead letter, retried from Failed tasks, then it runs.
    home(page, url)
    page.locator("#step-fail button").click()
    watch = page.url
    expect(page.locator("#step-status .badge.failed")).to_be_visible()
    retry_link = page.locator("#step-result a", has_text="Open Failed tasks to retry it")
    expect(retry_link).to_be_visible()
    page.goto(url + retry_link.get_attribute("href"))  # this page reloads itself: no click into a reload
    letter = page.locator("#failed tbody tr", has_text="fail_once")
    expect(letter).to_contain_text("failed on purpose for the tour")
    look(page, "07-failed-task")
    letter.locator("button", has_text="Retry").click()
    expect(page.locator(".flash")).to_contain_text("queued again")
    expect(page.locator("#failed tbody tr", has_text="fail_once")).to_have_count(0)
    page.goto(watch)
    expect(page.locator("#step-status .badge.done")).to_be_visible()
    expect(page.locator("#step-result")).to_contain_text("The retried task ran")
    look(page, "08-retried-task-ran")

    # 5. A periodic group now: the periodic page shows the runs (it reloads while they are pending).
    home(page, url)
    page.locator("#step-periodic button").click()
    expect(page).to_have_url(url + "/_tasks/admin/periodic")
    expect(page.locator(".flash")).to_contain_text("periodic task(s) of group default now")
    stats = page.locator("#periodic tbody tr", has_text="refresh_statistics")
    expect(stats.locator("td.num")).to_have_text("1")
    sweep = page.locator("#periodic tbody tr", has_text="sweep_outbox_task")
    expect(sweep).to_contain_text("every ping")
    expect(sweep).not_to_contain_text("due now")
    expect(page.locator("#periodic .badge.queued")).to_have_count(0)
    expect(stats.locator("button", has_text="Run now")).to_be_enabled()
    look(page, "09-periodic-ran")

    # 6. The callable tasks: a run that starts a query iterator is done and links to that run.
    home(page, url)
    page.locator("#step-callable a", has_text="Open the callable tasks").click()
    expect(page.locator("#tasks tbody tr")).to_have_count(2)
    look(page, "10-callable-tasks")
    page.click("text=Recalculate invoice taxes")
    page.locator("main button", has_text="Run task").click()
    expect(page.locator("#run-status .badge.done")).to_be_visible()
    started = page.locator("#run-started a", has_text="InvoiceTaxes run")
    expect(started).to_be_visible()
    expect(page.locator("#run-started .badge")).to_have_text("finished", timeout=90_000)
    expect(page.locator("#run-started-note")).to_contain_text("own part is done")
    look(page, "11-run-started-an-iterator")
    target = started.get_attribute("href")
    page.goto(url + target)
    expect(page.locator(f"#run-{target.rsplit('#run-', 1)[1]}")).to_contain_text("InvoiceTaxes")

    # The pages the tour did not land on read as well.
    for path, name, heading in (("/_tasks/admin", "13-dashboard", "Task dashboard"),
                                ("/_tasks/admin/runs", "14-runs", "Callable task runs"),
                                ("/_tasks/execute/generate_invoices", "15-form", "Generate demo invoices"),
                                ("/_tasks/execute/nope", "16-not-found", "Not found")):
        page.goto(url + path)
        expect(page.locator("main h1")).to_have_text(heading)
        expect(page.locator("head meta[http-equiv=refresh]")).to_have_count(0)
        look(page, name)
    page.goto(url + "/_tasks/execute/generate_invoices")
    page.fill("input[name=count]", "0")
    page.locator("main button", has_text="Run task").click()
    expect(page.locator(".field.invalid .errors")).to_have_text("Number must be between 1 and 500.")
    look(page, "17-form-range-message")

    # Sign out from the header (a POST with the CSRF token), back on the home page.
    home(page, url)
    page.locator("nav form.signout button").click()
    expect(page).to_have_url(url + "/")
    expect(page.locator("#signed-out")).to_be_visible()
    expect(page.locator("nav")).not_to_contain_text("Sign out")
    look(page, "12-signed-out")
    response = page.goto(url + "/_tasks/admin")
    assert response is not None and response.status == 401

    foreign = [u for u in page.requested if not u.startswith(url + "/")]  # type: ignore[attr-defined]
    assert foreign == [], f"the pages fetched from elsewhere: {foreign}"
