"""The callable-task pages the task handler routes here.

- ``GET /_tasks/list``: the tasks the current user may run (HTML; JSON for ``/_tasks/list/json``,
  ``?format=json`` or ``Accept: application/json``). Anonymous visitors get an empty list.
- ``GET /_tasks/execute/<key>``: the task's form. ``POST``: 401 anonymous, 404 unknown task,
  403 not allowed, 400 missing or wrong CSRF token, 422 invalid input (the form again, with its
  errors); otherwise the run is recorded and queued, and the browser is sent (303) to
  ``/_tasks/execute/<key>?run=<id>``, which shows the run until it finishes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask, redirect, request
from werkzeug.exceptions import NotFound as NoSuchRoute
from werkzeug.wrappers import Response  # what redirect() gives; Flask's Response is one

from core import key_ids
from core.admin import forms
from core.admin.render import (
    dashboard_path,
    error_response,
    guarded,
    is_admin,
    require_user,
    respond,
    user_id,
    wants_json,
)
from core.tasks import callable as callable_tasks
from core.tasks.errors import Forbidden, NotFound
from core.tasks.handler import CallablePages
from core.tasks.queryiter import runs as queryiter
from core.tasks.runtime import get_runtime
from core.tasks.started import StartedWork

#: Paths whose unknown pages get the task pages' styled 404 (the rest keep the app's own).
TASK_PAGES_PREFIX = "/_tasks/"

LIST_PATH = "/_tasks/list"
EXECUTE_PATH = "/_tasks/execute"
#: How often (seconds) a run page reloads itself while the run is unfinished.
RUN_REFRESH = 1


def describe_task(task: callable_tasks.CallableTaskBase) -> dict[str, Any]:
    """A task as the list shows it."""
    return {"key": task.key, "name": task.name or task.key, "descr": task.descr or "",
            "kindName": task.kindName, "has_form": task.dataSkel() is not None,
            "url": f"{EXECUTE_PATH}/{task.key}"}


def describe_run(run: Any) -> dict[str, Any]:
    """A run record as pages and JSON show it."""
    return {"id": run.key.name, "task": run.get("task"), "task_name": run.get("task_name"),
            "user": run.get("user"), "data": run.get("data_summary") or "", "status": run.get("status"),
            "retrying": bool(run.get("retrying")), "attempts": run.get("attempts") or 0,
            "created": run.get("created"), "started": run.get("started"), "finished": run.get("finished"),
            "error": run.get("error"), "task_id": run.get("task_id"),
            "started_work": [dataclasses.asdict(work) for work in map(StartedWork.from_text,
                                                                                     run.get("started_work") or [])
                             if work is not None],
            "url": f"{EXECUTE_PATH}/{run.get('task')}?run={run.key.name}"}


def follow_started_work(started_work: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a run started, with each piece's current status and where to watch it."""
    dashboard = dashboard_path()
    followed = []
    for work in started_work:
        entry = {**work, "status": None, "processed": None, "url": None}
        if work["kind"] == "queryiter":
            info = queryiter.get_run(work["id"])
            if info is not None:
                entry.update(status=info.status, processed=info.processed)
            if dashboard is not None:
                entry["url"] = f"{dashboard}/queryiters#run-{work['id']}"
        followed.append(entry)
    return followed


def run_is_active(run: dict[str, Any]) -> bool:
    return run["status"] in (callable_tasks.QUEUED, callable_tasks.RUNNING) or run["retrying"]


@guarded
def list_callable_tasks(*path_args: str) -> Response:
    """The callable tasks the current user may run; nothing for anonymous visitors."""
    if path_args and path_args != ("json",):
        return error_response(404, "no such page", path_args=path_args)
    runtime = get_runtime()
    tasks = [describe_task(t) for t in callable_tasks.registered_tasks(runtime) if callable_tasks.may_call(t)]
    return respond("list.html", {"tasks": tasks}, path_args=path_args, title="Tasks you can run")


@guarded
def execute_callable_task(task_id: str | None) -> Response:
    """Show a task's form (GET), queue a run of it (POST), or show one run (GET ``?run=<id>``)."""
    require_user()
    runtime = get_runtime()
    task = callable_tasks.find_task(runtime, task_id)
    if task is None:
        raise NotFound(f"there is no task {task_id!r}")
    if request.method == "GET" and request.args.get("run"):
        return _show_run(task, request.args["run"])
    if not callable_tasks.may_call(task):
        raise Forbidden(f"you may not run {task.name or task.key!r}")
    form = forms.build_form(task.dataSkel())
    if request.method != "POST":
        return _form_page(task, form)
    valid = form.validate()
    if forms.csrf_failed(form):
        return error_response(400, "The form expired or did not come from this site (CSRF token missing "
                                   "or wrong). Reload the form and submit it again.")
    if not valid:
        return _form_page(task, form, status=422)
    run = callable_tasks.queue_run(runtime, task, forms.form_data(form), summary=forms.data_summary(form))
    described = describe_run(run)
    if wants_json():
        return respond("run.html", {"run": described, "watch": described["url"]}, 202)
    return redirect(described["url"], code=303)


def _form_page(task: callable_tasks.CallableTaskBase, form: Any, status: int = 200) -> Response:
    data = {"task": describe_task(task), "fields": forms.describe_fields(form),
            "errors": forms.field_errors(form), "csrf_token": form.csrf_token.current_token
            if hasattr(form, "csrf_token") else None}
    return respond("execute.html", data, status, form=form, input_fields=forms.input_fields(form),
                   title=task.name or task.key)


def _show_run(task: callable_tasks.CallableTaskBase, run_id: str) -> Response:
    """One run, for the user who started it and for admins; others get 404 (no hint it exists)."""
    run = callable_tasks.get_run(key_ids.key_id(run_id, what="run id"))
    if run is None or run.get("task") != task.key or (run.get("user") != user_id() and not is_admin()):
        raise NotFound("there is no such run")
    described = describe_run(run)
    described["started_work"] = follow_started_work(described["started_work"])
    watching = run_is_active(described) or any(w["status"] == queryiter.RUNNING for w in described["started_work"])
    return respond("run.html", {"run": described, "task": describe_task(task)},
                   refresh=RUN_REFRESH if watching else None,
                   title=f"Run of {task.name or task.key}")


#: What ``TaskHandler.list`` and ``TaskHandler.execute`` serve in every app (``Tasks(app)`` installs it).
PAGES = CallablePages(list=list_callable_tasks, execute=execute_callable_task)


def install_not_found_page(app: Flask) -> None:
    """A styled 404 (the task pages' look, header and links) for unknown paths under ``/_tasks/``.

    Other paths keep the 404 the app had when ``Tasks(app)`` ran (its own handler, else Flask's).
    """
    previous = app.error_handler_spec.get(None, {}).get(404, {}).get(NoSuchRoute)

    def not_found(error: NoSuchRoute) -> Any:
        if request.path.startswith(TASK_PAGES_PREFIX):
            return error_response(404, f"There is no page at {request.path}. The links above lead to every task page.")
        return previous(error) if previous is not None else error

    app.register_error_handler(NoSuchRoute, not_found)
