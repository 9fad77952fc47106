"""``@StartupTask``: run a function once per deployed version, shortly after it starts.

ViUR runs startup tasks on every instance start, so autoscaling runs them many times. Here the
first instance of a version to start claims them in one Datastore transaction on a record keyed
by ``settings.app_version`` and queues one task per function (through the outbox, so a queue
that is down delays them and never blocks the start); every later start finds the record and
does nothing more than one lookup. The queue retries a failing startup task like any task.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from core import db
from core.clock import utc_now as _now
from core.reprs import safe_repr
from core.tasks import aio, message
from core.tasks.deferred import DEFERRED_PATH, DeferredTarget, send_task
from core.tasks.errors import PayloadError, TaskNotFound, error_text
from core.tasks.periodic.declare import check_no_arguments
from core.tasks.registry import declare, declare_builtin, declare_kind, qualified_name
from core.tasks.runtime import TaskRuntime, current_runtime, get_runtime
from core.tasks.transports.base import hashed_task_name

log = logging.getLogger(__name__)

STARTUP_KIND = "_tasks_startup"


@dataclasses.dataclass(frozen=True)
class StartupSpec:
    name: str
    func: Callable[[], Any]


def StartupTask(fn: Callable[[], Any]) -> Callable[[], Any]:  # noqa: N802 - ViUR's name
    """Decorator: run ``fn`` (no arguments) once per deployed version, in a task after the version starts."""
    if not callable(fn) or isinstance(fn, (staticmethod, classmethod)):
        raise TypeError(f"@StartupTask needs a module-level function, got {fn!r}")
    if "." in fn.__qualname__:
        raise TypeError(f"@StartupTask needs a module-level function; {fn.__qualname__} is inside a class")
    check_no_arguments(fn, False, "startup task")
    aio.check_runnable(fn, "startup task")
    spec = StartupSpec(qualified_name(fn), fn)
    declare("startup", spec.name, spec, same=lambda a, b: a.func is b.func)
    return fn


startup_task = StartupTask


def record_key(version: str) -> db.Key:
    return db.key(STARTUP_KIND, version)


def startup_task_name(version: str, name: str) -> str:
    """The queue's name for a version's run of one startup task (hashed, so new per version)."""
    return hashed_task_name(f"{version}\n{name}", "-startup")


def _claim(runtime: TaskRuntime, names: list[str], version: str) -> list[str]:
    """In a transaction: queue the startup tasks of ``version`` no instance has queued yet."""
    key = record_key(version)
    record = db.get(key)
    if record is None:
        record = db.Entity(key, exclude_from_indexes=("last_error",))
        record.update({"version": version, "queued": [], "done": [], "created": _now()})
    missing = [name for name in names if name not in (record.get("queued") or [])]
    if not missing:
        return []
    target_version = version if runtime.settings.runtime == "appengine" else None
    for name in missing:
        send_task(runtime, RUN_TARGET.name, {"startup": name, "version": version}, target=RUN_TARGET.name,
                  name=startup_task_name(version, name), tracked=True, target_version=target_version)
    record["queued"] = list(record.get("queued") or []) + missing
    db.put(record)
    return missing


def _queue_startup_tasks(runtime: TaskRuntime) -> list[str]:
    names = sorted(runtime.registry.startup)
    if not names:
        return []
    version = runtime.settings.app_version
    record = db.get(record_key(version))  # the one lookup of every start after the first
    if record is not None and set(names) <= set(record.get("queued") or []):
        return []
    queued = db.run_in_transaction(_claim, runtime, names, version)
    if queued:
        log.info("version %s: queued startup task(s) %s", version, ", ".join(queued))
    return queued


def runStartupTasks(runtime: TaskRuntime | None = None, *, background: bool = False) -> list[str]:  # noqa: N802
    """Queue this version's startup tasks unless an instance of the version already did.

    Call it once the app is built (``runStartupTasks(app.extensions["core"])``). Returns the names
    it queued (empty when already done). Never raises: a start must not fail because of it; an
    error is logged and the next instance start tries again. With ``background`` the work runs on
    a daemon thread and the call returns at once (with an empty list).
    """
    runtime = runtime or get_runtime()
    if background:
        threading.Thread(target=runStartupTasks, args=(runtime,), name="startup-tasks", daemon=True).start()
        return []
    try:
        if current_runtime() is not runtime:  # a thread of its own, or the app's start: its store is the app's
            with runtime.bound():
                return _queue_startup_tasks(runtime)
        return _queue_startup_tasks(runtime)
    except db.TransactionFailedError:
        log.info("startup tasks: another instance is queuing them")
        return []
    except Exception:
        log.exception("could not queue the startup tasks of version %s", runtime.settings.app_version)
        return []


run_startup_tasks = runStartupTasks


def _mark(key: db.Key, name: str, error: str | None) -> None:
    record = db.get(key)
    if record is None:
        return
    if error is None:
        if name not in (record.get("done") or []):
            record["done"] = list(record.get("done") or []) + [name]
    else:
        record.update({"last_error": error, "last_error_task": name, "last_error_at": _now()})
    db.put(record)


def run_startup_task(runtime: TaskRuntime, envelope: message.Envelope, info: Any) -> None:
    """Run one startup task of a version (the ``startup`` task :func:`runStartupTasks` queued)."""
    name, version = envelope.payload.get("startup"), envelope.payload.get("version")
    if not isinstance(name, str):
        raise TaskNotFound(f"a startup run names no startup task but {safe_repr(name)}")
    if not isinstance(version, str):
        raise PayloadError(f"a startup run of {name} names no version but {safe_repr(version)}")
    if version != runtime.settings.app_version:
        # Another version's code: that version ran (or runs) its own; running it here would be extra.
        log.info("startup task %s of version %s skipped on version %s", name, version, runtime.settings.app_version)
        return
    spec: StartupSpec = runtime.registry.startup.get(name)
    key = record_key(version)
    record = db.get(key)
    if record is not None and name in (record.get("done") or []):
        log.info("startup task %s of version %s already ran", name, version)
        return
    try:
        aio.call(spec.func)
    except Exception as exc:
        try:
            db.run_in_transaction(_mark, key, name, error_text(exc))
        except Exception:
            log.exception("could not record the failure of startup task %s", name)
        raise
    db.run_in_transaction(_mark, key, name, None)


#: The kind of every startup run's task (also what its task record names as target).
RUN_TARGET = declare_kind("startup", run_startup_task, DEFERRED_PATH)


def _run_as_queued_before(name: str, version: str) -> None:
    """A startup run that an earlier version queued as a deferred call: run it as the kind does."""
    run_startup_task(get_runtime(), message.Envelope("startup", {"startup": name, "version": version}, ""), None)


#: The name earlier versions queued startup runs under; runs still queued at a deploy keep running.
EARLIER_RUN_TARGET = "core.tasks.startup.run_startup_task"
declare_builtin("deferred", EARLIER_RUN_TARGET, DeferredTarget(EARLIER_RUN_TARGET, _run_as_queued_before, "function"))


def startup_overview(runtime: TaskRuntime, version: str | None = None) -> dict[str, Any]:
    """The startup record of a version (default: this one), for the admin pages."""
    version = version or runtime.settings.app_version
    record = db.get(record_key(version))
    names = sorted(runtime.registry.startup)
    return {"version": version, "tasks": names,
            "queued": list(record.get("queued") or []) if record else [],
            "done": list(record.get("done") or []) if record else [],
            "last_error": record.get("last_error") if record else None,
            "last_error_task": record.get("last_error_task") if record else None}

