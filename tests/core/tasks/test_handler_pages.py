"""The task handler serves the callable-task pages the web layer installed on the app, and only those."""
from __future__ import annotations

from core.admin import views
from core.tasks.handler import CallablePages


def test_the_extension_installs_the_admin_pages(app) -> None:
    assert app.extensions["core"].app_state.callable_pages is views.PAGES


def test_list_and_execute_answer_with_the_installed_pages(app, client) -> None:
    seen = []
    app.extensions["core"].app_state.callable_pages = CallablePages(
        list=lambda *args: seen.append(("list", args)) or "listed",
        execute=lambda task_id: seen.append(("execute", task_id)) or "ran")
    assert client.get("/_tasks/list/json").get_data(as_text=True) == "listed"
    assert client.get("/_tasks/execute/some-task").get_data(as_text=True) == "ran"
    assert seen == [("list", ("json",)), ("execute", "some-task")]


def test_an_app_without_pages_answers_404(app, client) -> None:
    app.extensions["core"].app_state.callable_pages = None
    assert client.get("/_tasks/list").status_code == 404
    assert client.post("/_tasks/execute/some-task").status_code == 404
