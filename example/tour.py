"""The home page: a guided tour with a button per capability, and the little tasks behind them.

Each button is a CSRF-checked POST that starts something real (a deferred call, one with a
countdown, a task that fails, a query iterator run, a periodic group) and sends the browser where
it can be watched. A tour step is kept in a ``tour_step`` entity that the task updates when it runs.
"""
from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

from flask import Response, abort, flash, redirect

from core import current, db, key_ids
from core.module import Module, exposed
from core.tasks import PayloadError, PermanentTaskFailure, TaskHandle, UntrackedTask, callDeferred
from core.tasks.periodic.controls import run_group_now
from core.tasks.records import TaskRecord
from core.tasks.runtime import get_runtime
from example.admin_tasks import INVOICE_KIND, InvoiceTaxes
from example.pages import csrf_ok, page

STEP_KIND = "tour_step"
#: Seconds the countdown step holds its task back.
COUNTDOWN_SECONDS = 10
#: Demo invoices the query iteration step creates when there are none yet.
DEMO_INVOICES = 300
#: Seconds between reloads of a step's page until its task has run.
WATCH_REFRESH = 1

QUEUED, RAN, FAILED = "queued", "ran", "failed"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _user_name() -> str | None:
    user = current.user.get()
    return get_runtime().users.id_of(user) if user is not None else None


def _is_admin() -> bool:
    return bool(get_runtime().users.is_admin(current.user.get()))


def _is_token(token: str) -> bool:
    return len(token) == 32 and all(c in "0123456789abcdef" for c in token)


def _step_key(token: str) -> db.Key:
    """The step's key; a token the tour never made (it makes uuid4 hex) can never run: a dead letter."""
    if not _is_token(token):
        raise PayloadError(f"{token[:40]!r} is not a tour step token")
    return db.key(STEP_KIND, token)


def _mark(token: str, **fields: Any) -> db.Entity:
    """Write fields onto a step (creating it if it is missing); returns it."""
    def update() -> db.Entity:
        entity = db.get(_step_key(token)) or db.Entity(_step_key(token))
        entity.update(fields)
        db.put(entity)
        return entity
    return db.run_in_transaction(update)


@callDeferred(track=True, tags=("tour",), description="The tour's deferred call")
def run_step(token: str) -> None:
    """The deferred call of the first two steps: notes when, where and for whom it ran.

    Tracked, so the dashboard's Tasks page shows it (with its tag and description) queued, then
    succeeded, and the step's page reads its state from the same task record.
    """
    _mark(token, status=RAN, ran_at=_now(), ran_for=_user_name(), pid=os.getpid(),
          language=current.language.get())


@callDeferred
def fail_once(token: str) -> None:
    """Fails permanently the first time (a dead letter); succeeds when the dead letter is retried."""
    step = db.get(_step_key(token))
    if step is None or step.get("status") != FAILED:
        _mark(token, status=FAILED, failed_at=_now())
        raise PermanentTaskFailure("failed on purpose for the tour; retry it from Failed tasks")
    _mark(token, status=RAN, ran_at=_now(), ran_for=_user_name(), pid=os.getpid(), retried=True)


def _ensure_invoices() -> int:
    """Demo invoices for the query iteration to walk; creates them when there are none."""
    if db.Query(INVOICE_KIND).keys_only().run(limit=1):
        return 0
    now, entities = _now(), []
    for number in range(1, DEMO_INVOICES + 1):
        entity = db.Entity(db.key(INVOICE_KIND, f"tour-{number:04d}"))
        entity.update({"month": "2026-10", "year": 2026, "number": number, "customer": f"Customer {number % 7 + 1}",
                       "title": f"Tour invoice {number}", "amount": number * 10, "created_by": _user_name(),
                       "created": now})
        entities.append(entity)
    db.put(entities)
    return len(entities)


def _task_state(task_id: Any) -> TaskRecord | None:
    """The tracked task's record (its state, attempts); ``None`` for an untracked step or an expired record."""
    if not isinstance(task_id, str):
        return None
    try:
        return TaskHandle.fetch(task_id).status()
    except UntrackedTask:
        return None


class Index(Module):
    """``/``: what the task module does, one button per capability."""

    @exposed(methods=("GET",))
    def index(self) -> Response:
        return page("index.html", title="Deferred tasks: a guided tour", countdown=COUNTDOWN_SECONDS)


class Tour(Module):
    """``/tour/...``: the buttons of the home page and the pages that show their effect."""

    def _start(self, *, admin: bool = False) -> None:
        if current.user.get() is None:
            abort(401)
        if admin and not _is_admin():
            abort(403)
        if not csrf_ok():
            abort(400, "The form expired or did not come from this site. Reload the page and try again.")

    def _new_step(self, kind: str, **fields: Any) -> str:
        token = uuid.uuid4().hex
        entity = db.Entity(_step_key(token))
        entity.update({"kind": kind, "status": QUEUED, "by": _user_name(), "queued_at": _now(), **fields})
        db.put(entity)
        return token

    @exposed(methods=("POST",))
    def defer(self) -> Response:
        """Defer a call; its page shows it queued, then run."""
        self._start()
        token = self._new_step("defer", due_at=_now())
        _mark(token, task_id=run_step(token).id)
        return redirect(f"/tour/watch/{token}", code=303)

    @exposed(methods=("POST",))
    def countdown(self) -> Response:
        """Defer a call that runs ``COUNTDOWN_SECONDS`` later (``_countdown``)."""
        self._start()
        token = self._new_step("countdown", due_at=_now() + datetime.timedelta(seconds=COUNTDOWN_SECONDS))
        _mark(token, task_id=run_step(token, _countdown=COUNTDOWN_SECONDS).id)
        return redirect(f"/tour/watch/{token}", code=303)

    @exposed(methods=("POST",))
    def fail(self) -> Response:
        """Defer a call that fails into a dead letter, for an admin to retry."""
        self._start(admin=True)
        token = self._new_step("fail", due_at=_now())
        fail_once(token)
        return redirect(f"/tour/watch/{token}", code=303)

    @exposed(methods=("POST",))
    def iterate(self) -> Response:
        """Start a query iterator run over the invoices; the dashboard shows its progress."""
        self._start(admin=True)
        created = _ensure_invoices()
        run_id = InvoiceTaxes.startIterOnQuery(db.Query(INVOICE_KIND), customData={"rate": 0.19})
        made = f" ({created} demo invoices created)" if created else ""
        flash(f"Started a query iterator run over the invoices{made}.")
        return redirect(f"/_tasks/admin/queryiters#run-{run_id}", code=303)

    @exposed(methods=("POST",))
    def periodic(self) -> Response:
        """Run the periodic tasks of the ``default`` cron group now."""
        self._start(admin=True)
        queued = run_group_now(get_runtime(), "default")
        flash(f"Queued {len(queued)} periodic task(s) of group default now: {', '.join(queued) or 'none'}.")
        return redirect("/_tasks/admin/periodic", code=303)

    @exposed(methods=("GET",))
    def watch(self, token: str = "") -> Response:
        """One step: queued, then ran (or failed into a dead letter); reloads itself until settled."""
        token = key_ids.key_id(token, what="tour step token")
        step = db.get(_step_key(token)) if _is_token(token) else None
        if step is None or (step.get("by") != _user_name() and not _is_admin()):
            abort(404)
        task = _task_state(step.get("task_id"))
        # The task's own code has run before its record says succeeded: reload until both are so.
        settled = step.get("status") == RAN and (task is None or task.finished)
        titles = {"defer": "A deferred call", "countdown": "A deferred call with a countdown",
                  "fail": "A task that fails"}
        # A plain dict: on an entity, Jinja's ``step.kind`` would be the key's kind, not the property.
        return page("tour_watch.html", title=titles.get(step.get("kind"), "Tour step"), step=dict(step),
                    task=task, task_target=run_step.target.name, refresh=None if settled else WATCH_REFRESH, now=_now())
