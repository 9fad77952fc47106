"""Every task page in Chromium at 375 and 1280 px: named for what it shows, nothing off screen, legible chart.

The example app on gunicorn and the local queue, with data from the tour's buttons (a tracked call,
a failed task, a periodic group run now, a query iteration, a callable run). Screenshots of each
page at both widths go to ``test-artifacts/dashboard/`` (ignored by git).
"""
from __future__ import annotations

import re
from pathlib import Path

import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from core.tasks.auth.signing import sign_cron_ping
from tests.e2e.test_admin_browser import browser, new_page, sign_in  # noqa: F401 - the shared Chromium fixtures

__all__ = ["browser", "new_page"]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
WIDTHS = (375, 1280)
PAGES = (
    ("/_tasks/list", "Tasks you can run"),
    ("/_tasks/admin", "Task dashboard"),
    ("/_tasks/admin/periodic", "Periodic tasks"),
    ("/_tasks/admin/queryiters", "Query iterator runs"),
    ("/_tasks/admin/failed", "Failed tasks"),
    ("/_tasks/admin/runs", "Callable task runs"),
    ("/_tasks/admin/tasks", "Tracked tasks"),
    ("/_tasks/admin/workflows", "Groups and chains"),
    ("/_tasks/admin/queues", "Queues"),
    ("/_tasks/admin/queues/default", "Queue default"),
    ("/_tasks/admin/metrics", "Metrics"),
    ("/_tasks/admin/no-such-page", "Not found"),
)


def go(page: Page, url: str) -> None:
    """``page.goto`` that tries again when the page it leaves reloaded itself meanwhile (net::ERR_ABORTED)."""
    for _ in range(20):
        try:
            page.goto(url)
            return
        except PlaywrightError:
            page.wait_for_timeout(200)
    page.goto(url)


def settled(page: Page, url: str) -> None:
    """Open ``url`` and wait until it no longer reloads itself (runs still pending refresh their page)."""
    for _ in range(60):
        go(page, url)
        if page.locator("head meta[http-equiv=refresh]").count() == 0:
            return
        page.wait_for_timeout(1000)
    raise AssertionError(f"{url} kept reloading itself")


def check_widths(page: Page, name: str) -> None:
    """At each width: a screenshot, no horizontal overflow, every table cell on screen, chart text >= 11 px."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function("w => window.innerWidth === w", arg=width)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        scroll_width, inner_width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert scroll_width <= inner_width, f"{name} is {scroll_width} px wide at {width} px"
        off_screen = page.evaluate(
            "[...document.querySelectorAll('main td, main th')].filter(c => c.offsetParent !== null)"
            ".filter(c => { const r = c.getBoundingClientRect(); return r.width > 0 &&"
            " (r.left < -1 || r.right > innerWidth + 1); }).map(c => (c.innerText || '').slice(0, 40))")
        assert off_screen == [], f"{name}: cells off screen at {width} px: {off_screen}"
        if width < 720:  # rows are cards there: each cell must carry its own column's name
            mislabelled = page.evaluate(
                "[...document.querySelectorAll('main table')].flatMap(table => {"
                " const heads = [...table.querySelectorAll('thead th')].map(th => th.textContent.trim());"
                " return [...table.querySelectorAll('tbody tr')].filter(tr => !tr.querySelector('[colspan]'))"
                "  .flatMap(tr => [...tr.children].map((td, i) => [heads[i],"
                "   getComputedStyle(td, '::before').content.replace(/^\"|\"$/g, ''), td.textContent.trim()]))"
                "  .filter(([head, label, text]) => head && text && label !== head); })")
            assert mislabelled == [], f"{name}: cells under the wrong name at {width} px: {mislabelled}"
        tiny = page.evaluate(
            "[...document.querySelectorAll('#activity svg text, #activity .chart span')]"
            ".map(e => [e.textContent, e.getBoundingClientRect().height,"
            " parseFloat(getComputedStyle(e).fontSize)])"
            ".filter(([text, height, size]) => text.trim() && (size < 11 || (height > 0 && height < 11)))")
        assert tiny == [], f"{name}: chart labels under 11 px at {width} px: {tiny}"
    page.set_viewport_size({"width": 1280, "height": 900})


def test_every_task_page_reads_right_at_both_widths(live_stack, new_page):
    url = live_stack.url
    page = new_page()
    sign_in(page, url, "admin", "admin-demo")

    # Data for every page: a cron ping as the local cron sends it (its periodic runs are tracked), then
    # the tour's buttons.
    ping = "/_tasks/cron/default"
    response = requests.get(url + ping, timeout=60, headers={**sign_cron_ping(live_stack.settings.tasks_secret, ping),
                                                             "User-Agent": "local-cron"})
    assert response.status_code == 200, response.text
    go(page, url + "/")
    page.locator("#step-defer button").click()
    expect(page.locator("#step-task .badge")).to_have_text("succeeded")
    go(page, url + "/")
    page.locator("#step-fail button").click()
    expect(page.locator("#step-status .badge.failed")).to_be_visible()
    go(page, url + "/")
    page.locator("#step-periodic button").click()
    expect(page.locator(".flash")).to_contain_text("periodic task(s) of group default now")
    go(page, url + "/")
    page.locator("#step-iterate button").click()
    expect(page.locator(".flash")).to_contain_text("Started a query iterator run")
    go(page, url + "/_tasks/list")
    page.click("text=Recalculate invoice taxes")
    page.locator("main button", has_text="Run task").click()
    expect(page.locator("#run-status .badge.done")).to_be_visible()

    titles = []
    for path, title in PAGES:
        settled(page, url + path)
        expect(page.locator("main h1")).to_have_text(title)
        titles.append(title)
        check_widths(page, path.strip("/").replace("/", "-"))
    assert len(set(titles)) == len(titles)  # no two pages share a name

    # The header names the pages as their titles do.
    nav = [text.strip() for text in page.locator("nav a").all_inner_texts()]
    assert "Tasks" not in nav and {"Run a task", "Callable task runs", "Tracked tasks", "Periodic tasks"} <= set(nav)

    # A periodic run on the tracked tasks page is named by its task, not by its kind.
    settled(page, url + "/_tasks/admin/tasks?target=periodic")
    periodic_row = page.locator("#tasks-list tbody tr", has_text="refresh_statistics")
    expect(periodic_row.locator("td").first).to_contain_text("periodic run")

    # The unknown page is the styled 404 with the header and a way back.
    response = page.goto(url + "/_tasks/admin/no-such-page")
    assert response is not None and response.status == 404
    expect(page.locator("nav a", has_text="Tracked tasks")).to_be_visible()
    expect(page.locator("main a", has_text="Back to the dashboard")).to_be_visible()

    # Retrying a failed task names what it runs, not a number.
    settled(page, url + "/_tasks/admin/failed")
    page.locator("#failed tbody tr", has_text="fail_once").locator("button", has_text="Retry").click()
    flash = page.locator(".flash")
    expect(flash).to_contain_text("fail_once")
    expect(flash).to_contain_text("queued again")
    assert not re.match(r"Task \d+ queued again", flash.inner_text())
