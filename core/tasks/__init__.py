"""Deferred, periodic, startup and callable tasks and query iterators (ViUR's ``core.tasks``).

The ViUR names are the public contract; snake_case aliases sit beside them. Names are imported on
first use, so processes that need one room only (the local queue's dispatcher) stay light; the app
factory imports every room whose tasks the handler must be able to run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS: dict[str, str] = {
    # deferred calls
    "callDeferred": "core.tasks.deferred", "CallDeferred": "core.tasks.deferred",
    "call_deferred": "core.tasks.deferred", "noRetry": "core.tasks.deferred", "no_retry": "core.tasks.deferred",
    "retry_n_times": "core.tasks.deferred", "TaskHandle": "core.tasks.handle", "TaskStatus": "core.tasks.handle",
    "Constant": "core.tasks.retry", "Linear": "core.tasks.retry", "Exponential": "core.tasks.retry",
    "sweep_outbox": "core.tasks.dispatch", "report_progress": "core.tasks.progress",
    # the codec, under its ViUR names
    "JsonKeyEncoder": "core.json", "jsonDecodeObjectHook": "core.json",
    # periodic and startup tasks
    "PeriodicTask": "core.tasks.periodic_declare", "periodic_task": "core.tasks.periodic_declare",
    "removePeriodicTask": "core.tasks.periodic_declare", "remove_periodic_task": "core.tasks.periodic_declare",
    "find_bound_task": "core.tasks.periodic", "periodic_overview": "core.tasks.periodic",
    "Crontab": "core.tasks.schedule", "Weekday": "core.tasks.schedule", "Month": "core.tasks.schedule",
    "StartupTask": "core.tasks.startup", "startup_task": "core.tasks.startup",
    "runStartupTasks": "core.tasks.startup", "run_startup_tasks": "core.tasks.startup",
    # query iterators
    "QueryIter": "core.tasks.queryiter.api", "MetaQueryIter": "core.tasks.queryiter.api",
    "DeleteEntitiesIter": "core.tasks.queryiter.api",
    # callable tasks
    "CallableTask": "core.tasks.callable", "CallableTaskBase": "core.tasks.callable",
    "callable_task": "core.tasks.callable",
    # the handler module, registry and runtime
    "TaskHandler": "core.tasks.handler", "TaskRegistry": "core.tasks.registry",
    "isolated_registry": "core.tasks.registry",
    "TaskRuntime": "core.tasks.runtime", "get_runtime": "core.tasks.runtime",
    # the Flask extension (``Tasks(app)``), re-exported so plain Flask apps need one import
    "Tasks": "core.extension",
    # hooks
    "TaskHook": "core.tasks.hooks", "TaskCall": "core.tasks.hooks",
    # errors
    **{name: "core.tasks.errors" for name in (
        "TaskError", "PermanentTaskFailure", "RetryTask", "TaskNotFound", "PayloadError", "BadTaskRequest",
        "Forbidden", "NotFound", "DeferredArgumentError", "DuplicateTask", "EnqueueError",
        "InvalidScheduleSpecification", "LockHeld", "TaskFailed", "TaskCancelled", "UntrackedTask",
        "UnsupportedTargetError")},
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from core.extension import Tasks
    from core.json import JsonKeyEncoder, jsonDecodeObjectHook
    from core.tasks.callable import CallableTask, CallableTaskBase, callable_task
    from core.tasks.deferred import (
        CallDeferred,
        call_deferred,
        callDeferred,
        no_retry,
        noRetry,
        retry_n_times,
    )
    from core.tasks.dispatch import sweep_outbox
    from core.tasks.errors import (
        BadTaskRequest,
        DeferredArgumentError,
        DuplicateTask,
        EnqueueError,
        Forbidden,
        InvalidScheduleSpecification,
        LockHeld,
        NotFound,
        PayloadError,
        PermanentTaskFailure,
        RetryTask,
        TaskCancelled,
        TaskError,
        TaskFailed,
        TaskNotFound,
        UnsupportedTargetError,
        UntrackedTask,
    )
    from core.tasks.handle import TaskHandle, TaskStatus
    from core.tasks.handler import TaskHandler
    from core.tasks.hooks import TaskCall, TaskHook
    from core.tasks.periodic import (
        PeriodicTask,
        find_bound_task,
        periodic_overview,
        periodic_task,
        remove_periodic_task,
        removePeriodicTask,
    )
    from core.tasks.progress import report_progress
    from core.tasks.queryiter.api import DeleteEntitiesIter, MetaQueryIter, QueryIter
    from core.tasks.registry import TaskRegistry, isolated_registry
    from core.tasks.retry import Constant, Exponential, Linear
    from core.tasks.runtime import TaskRuntime, get_runtime
    from core.tasks.schedule import Crontab, Month, Weekday
    from core.tasks.startup import StartupTask, run_startup_tasks, runStartupTasks, startup_task
