"""User-callable tasks (ViUR's ``CallableTask``): admin jobs a person starts from a page.

A callable task is a class registered by its ``key``::

    @CallableTask
    class RebuildSearch(CallableTaskBase):
        key = "rebuild_search"
        name = "Rebuild the search index"
        descr = "Re-indexes every article."

        def canCall(self) -> bool:              # may the current user start it? (default: admins)
            return is_editor(current.user.get())

        def dataSkel(self) -> type[FlaskForm]:  # the input it needs, or None
            return RebuildForm                   # a Flask-WTF form class: fields, validators, CSRF

        def execute(self, language: str) -> None:   # called with the form's field values
            ...

The admin pages (``/_tasks/list``, ``/_tasks/execute/<key>``) show the form; a valid submission
is not run inside the request (ViUR did that) but queued: :func:`queue_run` records a run
(kind ``_tasks_callable_run``) and defers :func:`run_callable_task`, which runs in a task with the
submitting user restored, checks ``canCall()`` again and keeps the run record's status current
(``queued`` → ``running`` → ``done`` or ``failed``: states of :class:`~core.tasks.records.TaskState`).
``done`` means the run's own part is done: work it started (a query iterator run) is listed in
``started_work`` and followed on its own page.
Its ``attempts`` count every execution of the run, a retried dead letter's included.

Field values travel through ``core.json``: strings, numbers, booleans, dates, datetimes, Decimals
and lists of them are fine; a file upload is not (store it first and pass its key).
"""
from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from core import current, db
from core.clock import utc_now as _now
from core.tasks import aio, arguments, started
from core.tasks.deferred import DeferredFunction, TaskHandle
from core.tasks.errors import ConfigurationError, PayloadError, PermanentTaskFailure, TaskNotFound, error_text
from core.tasks.queues import last_allowed_attempt
from core.tasks.records import TaskState
from core.tasks.registry import declare
from core.tasks.runtime import TaskRuntime, get_runtime

if TYPE_CHECKING:
    from flask_wtf import FlaskForm

log = logging.getLogger(__name__)

RUN_KIND = "_tasks_callable_run"
QUEUED, RUNNING, DONE, FAILED = TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE, TaskState.FAILED
#: Keys appear in URLs (``/_tasks/execute/<key>``): keep them to URL-safe characters.
KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_MAX_SUMMARY = 500
_UNINDEXED = ("data_summary", "error", "started_work")


class CallableTaskBase:
    """Base class of user-callable tasks; subclass it and register the subclass with ``@CallableTask``."""

    #: Unique identifier, used in URLs and to find the task when its run executes.
    key: str | None = None
    #: Human-readable name.
    name: str | None = None
    #: Human-readable description.
    descr: str | None = None
    kindName: str = "server-task"  # noqa: N815 - ViUR's name
    #: Executions of one run before it is given up and recorded as a dead letter.
    max_attempts: int = 3

    def canCall(self) -> bool:  # noqa: N802 - ViUR's name
        """May the current user (``core.current.user``) run this task? Default: admins only."""
        user = current.user.get()
        return user is not None and bool(get_runtime().users.is_admin(user))

    def dataSkel(self) -> type[FlaskForm] | None:  # noqa: N802 - ViUR's name
        """The input the task needs: a ``flask_wtf.FlaskForm`` subclass, or ``None`` for none."""
        return None

    def execute(self, **data: Any) -> None:
        """The work itself; called in a task with the form's field values as keyword arguments."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")


def CallableTask(cls: type[CallableTaskBase]) -> type[CallableTaskBase]:  # noqa: N802 - ViUR's name
    """Class decorator: register a :class:`CallableTaskBase` subclass under its ``key``."""
    if not isinstance(cls, type) or not issubclass(cls, CallableTaskBase):
        raise TypeError(f"@CallableTask decorates subclasses of CallableTaskBase, not {cls!r}")
    if not isinstance(cls.key, str) or not KEY_RE.match(cls.key):
        raise ConfigurationError(f"{cls.__qualname__}.key must match {KEY_RE.pattern}, got {cls.key!r}")
    if not isinstance(cls.max_attempts, int) or cls.max_attempts < 1:
        raise ConfigurationError(f"{cls.__qualname__}.max_attempts must be an int >= 1")
    aio.check_synchronous(cls.canCall, "callable task canCall")
    aio.check_synchronous(cls.dataSkel, "callable task dataSkel")
    aio.check_runnable(cls.execute, "callable task execute")
    declare("callable", cls.key, cls)
    # Its runner is built in; a registry made by hand (tests) gets it with its first callable task.
    declare("deferred", RUNNER.target.name, RUNNER.target)
    return cls


callable_task = CallableTask


def registered_tasks(runtime: TaskRuntime) -> list[CallableTaskBase]:
    """A fresh instance of every callable task of the app, ordered by name."""
    tasks = [cls() for cls in runtime.registry.callable.values()]
    return sorted(tasks, key=lambda t: (str(t.name or t.key).lower(), str(t.key)))


def find_task(runtime: TaskRuntime, key: str | None) -> CallableTaskBase | None:
    """A fresh instance of the task registered as ``key``, or ``None``."""
    cls = runtime.registry.callable.find(key) if key else None
    return cls() if cls is not None else None


def may_call(task: CallableTaskBase) -> bool:
    """Whether the current user may run ``task``: signed in and allowed by ``canCall()``.

    Anonymous visitors never may: a run always acts on behalf of someone. A ``canCall`` that
    raises counts as a refusal.
    """
    if current.user.get() is None:
        return False
    try:
        return bool(task.canCall())
    except Exception:
        log.exception("%s.canCall() failed; refusing", type(task).__qualname__)
        return False


def queue_run(runtime: TaskRuntime, task: CallableTaskBase, data: dict[str, Any], *,
              summary: str | None = None) -> db.Entity:
    """Record a run of ``task`` and queue it, both or neither; returns the run record.

    The deferred call carries the current user, which the task restores. The caller checks
    :func:`may_call` first; the task checks it again when it runs.
    """
    user = current.user.get()
    run_id = uuid.uuid4().hex
    summary = summarize(data) if summary is None else summary

    def record_and_queue() -> db.Entity:
        handle: TaskHandle = RUNNER(run_id, str(task.key), data)
        entity = db.Entity(db.key(RUN_KIND, run_id), exclude_from_indexes=_UNINDEXED)
        entity.update({
            "task": task.key, "task_name": task.name or task.key,
            "user": runtime.users.id_of(user) if user is not None else None,
            "data_summary": summary[:_MAX_SUMMARY], "status": QUEUED, "retrying": False,
            "created": _now(), "started": None, "finished": None, "error": None, "attempts": 0,
            "task_id": handle.id,
        })
        db.put(entity)
        return entity

    # One transaction: the task is created only if the record is written (outbox), never a phantom.
    return db.run_in_transaction(record_and_queue)


def get_run(run_id: str) -> db.Entity | None:
    """The record of one run, or ``None``."""
    if not run_id or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        return None
    return db.get(db.key(RUN_KIND, run_id))


def recent_runs(limit: int = 50) -> list[db.Entity]:
    """The newest run records first (a single-property index: no composite index needed)."""
    return db.Query(RUN_KIND).order("-created").run(limit=limit)


def summarize(data: dict[str, Any]) -> str:
    """A short, readable ``name=value`` summary of a run's input."""
    text = ", ".join(f"{name}={value!r}" for name, value in data.items())
    return text if len(text) <= _MAX_SUMMARY else text[:_MAX_SUMMARY - 1] + "…"


def run_callable_task(run_id: str, task_key: str, data: dict[str, Any]) -> None:
    """Run one queued run of a callable task, as the user who started it."""
    runtime = get_runtime()
    attempt = _next_attempt(run_id)
    cls = runtime.registry.callable.find(task_key)
    if cls is None:
        _update(run_id, task_key, status=FAILED, finished=_now(), attempts=attempt,
                error=f"no callable task is registered as {task_key!r}")
        raise TaskNotFound(f"no callable task is registered as {task_key!r}")
    task = cls()
    try:
        if not isinstance(data, dict) or not all(isinstance(name, str) for name in data):
            raise PayloadError(f"the input of {task_key} is not an object of named values")
        arguments.check_call(task.execute, f"{task_key}.execute", (), [], data, types=False)
    except PayloadError as exc:  # it can never run: a dead letter, not retries of a TypeError
        _update(run_id, task_key, status=FAILED, finished=_now(), attempts=attempt, error=str(exc))
        raise
    if not may_call(task):
        reason = "the user who started this run may no longer run this task"
        _update(run_id, task_key, status=FAILED, finished=_now(), attempts=attempt, error=reason)
        raise PermanentTaskFailure(f"{task_key}: {reason}")
    _update(run_id, task_key, status=RUNNING, started=_now(), finished=None, attempts=attempt, error=None,
            retrying=False, started_work=[])
    try:
        with started.collecting() as work:
            aio.call(task.execute, **data)
    except Exception as exc:
        # The budget counts from the run's latest send (a retried dead letter starts a fresh one).
        last = last_allowed_attempt(_sent_attempt(), max_attempts=cls.max_attempts)
        final = isinstance(exc, PermanentTaskFailure) or last is not None
        _update(run_id, task_key, status=FAILED, finished=_now(), error=error_text(exc),
                retrying=not final)
        if last is not None and not isinstance(exc, PermanentTaskFailure):
            raise PermanentTaskFailure(f"{task_key} failed on its last allowed attempt ({last}): {exc!r}") from exc
        raise
    # Done means this run's own part is done; what it started is linked and watched on its own.
    _update(run_id, task_key, status=DONE, finished=_now(), error=None, retrying=False,
            started_work=[item.to_text() for item in work])


#: The runner of every callable run, a deferred target of the library: every app's registry has it.
RUNNER = DeferredFunction(run_callable_task, track=True, builtin=True)
# The module name keeps meaning the deferred function (its target is named after the plain one).
run_callable_task = RUNNER  # type: ignore[assignment]


def _sent_attempt() -> int:
    """This execution's number since the run was last sent (the queue's count)."""
    info = current.task.get()
    return (info.execution_count if info is not None else 0) + 1


def _next_attempt(run_id: str) -> int:
    """This execution's number among all of the run's: the queue's count restarts when a dead
    letter is sent again, the run record's does not."""
    info = current.task.get()
    queued = (info.execution_count if info is not None else 0) + 1
    try:
        record = db.get(db.key(RUN_KIND, run_id))
    except Exception:  # the record is for people to watch; the queue's count still holds
        log.exception("could not read the record of callable run %s", run_id)
        record = None
    recorded = int(record.get("attempts") or 0) + 1 if record is not None else 0
    return max(queued, recorded)


def _update(run_id: str, task_key: str, **fields: Any) -> None:
    """Write status fields onto a run record (re-creating it if it was deleted meanwhile)."""
    try:
        entity = db.get(db.key(RUN_KIND, run_id))
        if entity is None:
            entity = db.Entity(db.key(RUN_KIND, run_id), exclude_from_indexes=_UNINDEXED)
            entity.update({"task": task_key, "task_name": task_key, "user": None, "data_summary": "",
                           "created": _now(), "started": None, "task_id": None, "retrying": False})
        if isinstance(fields.get("error"), str):
            fields["error"] = error_text(fields["error"])
        entity.update(fields)
        db.put(entity)
    except Exception:  # the record is for people to watch; it must not decide the task's fate
        log.exception("could not update the record of callable run %s", run_id)

