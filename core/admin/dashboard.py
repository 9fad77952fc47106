"""The task dashboard: a module ``create_app`` mounts at ``_tasks/admin`` in every app.

Pages, for administrators only (``runtime.users.is_admin``; 401 anonymous, 403 everyone else),
each also as JSON with ``?format=json`` or ``Accept: application/json``:

- ``/_tasks/admin``: overview (counts and the newest entries of each page);
- ``/_tasks/admin/periodic``: periodic tasks, their schedule, last success, next due, last error;
  ``POST .../periodic/run`` (form field ``task``) queues one now;
- ``/_tasks/admin/queryiters``: query iterator runs with live progress (the page reloads itself
  while a run is running); ``POST .../queryiters/<run>/stop`` and ``.../resume``;
- ``/_tasks/admin/failed``: failed tasks (dead letters) with ``POST .../failed/<id>/retry`` and
  ``.../discard``;
- ``/_tasks/admin/runs``: runs of callable tasks;
- ``/_tasks/admin/workflows``: groups and chains with done / failed / total (``workflows_page``);
- ``/_tasks/admin/tasks``: tracked tasks (task records) with filters, the last hour's activity and
  the local queue's depth; ``POST .../tasks/<id>/cancel`` and ``.../retry`` (see ``tasks_page``).

Lists are paged by Datastore cursor (``paging``): every row is reachable, none is cut off.

Every action is a POST through a CSRF-checked form. A module rather than routes added by the app
factory: it is mounted like any other module, so an app decides whether and where it has one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flask import flash, jsonify, redirect, request
from werkzeug.wrappers import Response  # what redirect() gives; Flask's Response is one

from core import current, db, key_ids
from core.admin import forms, ops_pages, paging, tasks_page, workflows_page
from core.admin.render import Dashboard, error_response, guarded, require_admin, respond, wants_json
from core.admin.views import describe_run, run_is_active
from core.module import exposed
from core.tasks import callable as callable_tasks
from core.tasks import deadletters
from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.errors import NotFound
from core.tasks.periodic import controls
from core.tasks.periodic.kind import periodic_overview
from core.tasks.queryiter import runs as queryiter
from core.tasks.queryiter.runs import RUN_KIND as QUERY_RUN_KIND
from core.tasks.queryiter.runs import RunInfo, run_info
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import QUEUE_NAME_RE

#: Seconds between reloads of a page that shows something running.
REFRESH_SECONDS = 2
#: The dead-letter actions under the names earlier callers import (:mod:`core.tasks.deadletters`).
retry_dead_letter = deadletters.retry
discard_dead_letter = deadletters.discard


class TaskAdmin(Dashboard):
    """Administrators' view of periodic tasks, query iterator runs, failed tasks and callable runs."""

    @exposed(methods=("GET",))
    @guarded
    def index(self, *args: Any, **kwargs: Any) -> Response:
        """Overview: a few lines of every page."""
        runtime = require_admin()
        letters = deadletters.latest(limit=5)
        iters = query_runs(limit=5)
        runs = [describe_run(r) for r in callable_tasks.recent_runs(limit=5)]
        periodic = periodic_tasks(runtime)
        data = {"failed": letters, "failed_total": deadletters.count(), "queryiters": iters, "runs": runs,
                "periodic": periodic, "queryiters_available": iters is not None,
                "periodic_available": periodic is not None}
        active = any(r["status"] == "running" for r in iters or []) or any(run_is_active(r) for r in runs)
        return respond("dashboard.html", data, refresh=REFRESH_SECONDS if active else None, base=self._base(),
                       title="Task dashboard")

    @exposed(methods=("GET", "POST"))
    @guarded
    def periodic(self, action: str | None = None, *args: Any, **kwargs: Any) -> Response:
        """Periodic tasks and their schedule state (GET); run one now (POST ``run``, form field ``task``)."""
        runtime = require_admin()
        if request.method == "POST":
            return self._periodic_action(runtime, action)
        if action is not None:
            raise NotFound("no such page")
        tasks = periodic_tasks(runtime)
        pending = any(task.get("pending") for task in tasks or [])
        return respond("periodic.html", {"periodic": tasks or [], "available": tasks is not None},
                       refresh=REFRESH_SECONDS if pending else None, action_form=forms.ActionForm(),
                       base=self._base(), title="Periodic tasks")

    @exposed(methods=("GET", "POST"))
    @guarded
    def queryiters(self, run_id: str | None = None, action: str | None = None, *args: Any, **kwargs: Any) -> Response:
        """Query iterator runs (GET); stop or resume one (POST ``<run>/stop`` | ``<run>/resume``)."""
        runtime = require_admin()
        if request.method == "POST":
            return self._queryiter_action(runtime, run_id, action)
        if run_id is not None:
            raise NotFound("no such page")
        page = paging.paginate(db.Query(QUERY_RUN_KIND).order("-started"), describe_query_run)
        active = any(r["status"] == "running" for r in page.rows)
        return respond("queryiters.html", {"queryiters": page.rows, "available": True, "pages": page.as_json()},
                       refresh=REFRESH_SECONDS if active else None, action_form=forms.ActionForm(),
                       base=self._base(), title="Query iterator runs")

    @exposed(methods=("GET", "POST"))
    @guarded
    def failed(self, letter_id: str | None = None, action: str | None = None, *args: Any, **kwargs: Any) -> Response:
        """Failed tasks (GET); retry or discard one (POST ``<id>/retry`` | ``<id>/discard``)."""
        runtime = require_admin()
        if request.method == "POST" and letter_id == "bulk":
            refused = self._refused(action, ("retry", "discard"))
            if refused is not None:
                return refused
            assert action is not None
            message, done = ops_pages.bulk_action(runtime, action, request.form)
            return self._done("failed", message, changed=done)
        if request.method == "POST":
            return self._dead_letter_action(runtime, letter_id, action)
        if letter_id is not None:
            raise NotFound("no such page")
        page = paging.paginate(db.Query(DEAD_LETTER_KIND).order("-created"), deadletters.describe)
        return respond("failed.html", {"failed": page.rows, "pages": page.as_json()}, action_form=forms.ActionForm(),
                       base=self._base(), title="Failed tasks")

    @exposed(methods=("GET",))
    @guarded
    def runs(self, *args: Any, **kwargs: Any) -> Response:
        """Runs of callable tasks, newest first."""
        require_admin()
        page = paging.paginate(db.Query(callable_tasks.RUN_KIND).order("-created"), describe_run)
        active = any(run_is_active(r) for r in page.rows)
        return respond("runs.html", {"runs": page.rows, "pages": page.as_json()},
                       refresh=REFRESH_SECONDS if active else None, base=self._base(), title="Callable task runs")

    @exposed(methods=("GET", "POST"))
    @guarded
    def tasks(self, task_id: str | None = None, action: str | None = None, *args: Any, **kwargs: Any) -> Response:
        """Tracked tasks (GET); cancel or retry one (POST ``<id>/cancel`` | ``<id>/retry``)."""
        runtime = require_admin()
        if request.method == "POST":
            return self._task_action(runtime, task_id, action)
        if task_id is not None:
            raise NotFound("no such page")
        data = tasks_page.page_data(runtime, request.args, f"{self._base()}/tasks")
        return respond("tasks.html", data, action_form=forms.ActionForm(), base=self._base(), title="Tracked tasks")

    @exposed(methods=("GET", "POST"))
    @guarded
    def queues(self, queue: str | None = None, action: str | None = None, *args: Any, **kwargs: Any) -> Response:
        """The app's queues (GET), one queue's tasks (GET ``<queue>``); pause, resume, purge or run
        one task now (POST ``<queue>/pause`` | ``resume`` | ``purge`` | ``run``, form field ``task``)."""
        runtime = require_admin()
        if queue is not None:
            queue = key_ids.key_id(queue, what="queue name", pattern=QUEUE_NAME_RE)
            if queue not in runtime.queues:
                raise NotFound(f"the app has no queue {queue!r}")
        if request.method == "POST":
            refused = self._refused(action, ("pause", "resume", "purge", "run"), queue)
            if refused is not None:
                return refused
            assert queue is not None and action is not None
            message, changed = ops_pages.queue_action(runtime, queue, action, request.form)
            return self._done(f"queues/{queue}", message, changed=changed)
        if action is not None:
            raise NotFound("no such page")
        data = ops_pages.queues_data(runtime, queue, request.args.get("cursor"))
        title = f"Queue {queue}" if queue else "Queues"
        return respond("queues.html", data, action_form=forms.ActionForm(), base=self._base(), title=title)

    @exposed(methods=("GET",))
    @guarded
    def metrics(self, *args: Any, **kwargs: Any) -> Response:
        """Throughput, p50 / p95 duration and failure rate per queue and target, last hour and day."""
        require_admin()
        return respond("metrics.html", ops_pages.metrics_data(), base=self._base(), title="Metrics")

    @exposed(methods=("GET",))
    @guarded
    def workflows(self, *args: Any, **kwargs: Any) -> Response:
        """Groups and chains with their progress (``core.admin.workflows_page``)."""
        require_admin()
        data = workflows_page.page_data(request.args, f"{self._base()}/workflows")
        return respond("workflows.html", data, refresh=REFRESH_SECONDS if data["active"] else None,
                       base=self._base(), title="Groups and chains")

    # --- actions ----------------------------------------------------------------------------

    def _base(self) -> str:
        return "/" + self.module_path

    def _refused(self, action: str | None, allowed: tuple[str, ...], subject: str | None = "") -> Response | None:
        """404 for an action this page lacks (or one without its subject), 400 without a valid CSRF token."""
        if subject is None or action not in allowed:
            raise NotFound("no such action")
        form = forms.ActionForm()
        if not form.validate():
            return error_response(400, "The form expired or did not come from this site (CSRF token missing "
                                       "or wrong). Reload the page and try again.")
        return None

    def _done(self, page: str, message: str, **data: Any) -> Response:
        if wants_json():
            return jsonify({"ok": True, "message": message, **data})
        flash(message)
        return redirect(f"{self._base()}/{page}", code=303)

    def _queryiter_action(self, runtime: TaskRuntime, run_id: str | None, action: str | None) -> Response:
        refused = self._refused(action, ("stop", "resume"), run_id)
        if refused is not None:
            return refused
        run_id = key_ids.key_id(run_id, what="query iterator run id")
        if action == "stop":
            changed = queryiter.stop_run(run_id)
            message = f"Run {run_id} stopped." if changed else f"Run {run_id} was not running."
        else:
            changed = queryiter.resume_run(run_id, runtime=runtime)
            message = f"Run {run_id} resumed." if changed else f"Run {run_id} was neither stopped nor failed."
        return self._done("queryiters", message, changed=changed)

    def _periodic_action(self, runtime: TaskRuntime, action: str | None) -> Response:
        refused = self._refused(action, ("run", "pause", "resume"))
        if refused is not None:
            return refused
        name = request.form.get("task", "")
        if action in ("pause", "resume"):
            user = current.user.get()
            changed = controls.set_paused(runtime, name, action == "pause",
                                              by=str(getattr(getattr(user, "key", None), "id_or_name", "") or ""))
            state = "paused" if action == "pause" else "resumed"
            return self._done("periodic", f"{name} {state}." if changed else f"{name} was {state} already.",
                              changed=changed)
        outcome = controls.run_now(runtime, name)
        message = {controls.ENQUEUED: f"{name} queued to run now.",
                   controls.PAUSED: f"{name} is paused: resume it first."}.get(
                       outcome, f"{name} is queued or running already.")
        return self._done("periodic", message, changed=outcome == controls.ENQUEUED)

    def _task_action(self, runtime: TaskRuntime, task_id: str | None, action: str | None) -> Response:
        refused = self._refused(action, ("cancel", "retry"), task_id)
        if refused is not None:
            return refused
        task_id = tasks_page.checked_task_id(task_id)
        if action == "cancel":
            message = tasks_page.cancel_task(task_id)
        else:
            message = tasks_page.retry_task(runtime, task_id, deadletters.retry)
        return self._done("tasks", message)

    def _dead_letter_action(self, runtime: TaskRuntime, letter_id: str | None, action: str | None) -> Response:
        refused = self._refused(action, ("retry", "discard"), letter_id)
        if refused is not None:
            return refused
        key = deadletters.key_of(letter_id)
        what = _letter_name(key)
        if action == "retry":
            found = deadletters.retry(runtime, key)
            message = f"{what} queued again." if found else f"{what} was already handled."
        else:
            found = deadletters.discard(key)
            message = f"{what} discarded." if found else f"{what} was already handled."
        return self._done("failed", message, changed=found)


def _letter_name(key: db.Key) -> str:
    """How a flash message names a failed task: by what it ran (``Task <id>`` once it is gone)."""
    letter = db.get(key)
    target = letter.get("target") or letter.get("kind") if letter is not None else None
    return f"{target} (failed task {key.id_or_name})" if target else f"Task {key.id_or_name}"


# --- data of the pages (Flask-free) --------------------------------------------------------------

def periodic_tasks(runtime: TaskRuntime) -> list[dict[str, Any]]:
    """``core.tasks.periodic.periodic_overview`` as dicts."""
    return [dict(entry) for entry in periodic_overview(runtime)]


def query_runs(limit: int) -> list[dict[str, Any]]:
    """The newest query iterator runs as dicts (with ``rate`` and ``elapsed``)."""
    return [_run_dict(run) for run in queryiter.list_runs(limit)]


def describe_query_run(entity: db.Entity) -> dict[str, Any]:
    """A query iterator run record for its page: progress out of the total counted at the start.

    A record that does not read as a run (written by hand, or by another version) is still listed.
    """
    try:
        return _run_dict(run_info(entity))
    except (KeyError, TypeError, ValueError, AttributeError):
        return {"id": str(entity.key.id_or_name), "iterator": "(unreadable run record)", "kind": None,
                "status": "unknown", "processed": 0, "errors": 0, "total": None, "percent": None,
                "rate": 0.0, "eta": None, "started": None, "updated": None, "last_error": None}


def _run_dict(run: RunInfo) -> dict[str, Any]:
    percent = None
    if run.total:
        percent = 100.0 if run.status is queryiter.FINISHED else min(100.0, 100.0 * run.processed / run.total)
    return {**dataclasses.asdict(run), "rate": run.rate, "elapsed": run.elapsed, "eta": run.eta_seconds,
            "percent": percent}
