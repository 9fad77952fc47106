"""Deferred, periodic, startup and callable tasks and query iterators (ViUR's ``core.tasks``).

This is the public face: what users write, grouped by what it is for, each name once (ViUR's
documented ``CallDeferred`` alias of ``callDeferred`` aside). Everything else is reached by its
module (``core.tasks.registry.isolated_registry``, ``core.tasks.runtime.get_runtime``,
``core.tasks.errors.NotFound``, ...). Names are imported on first use, so processes that need one
room only (the local queue's dispatcher) stay light; the app factory imports every room whose
tasks the handler must be able to run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS: dict[str, str] = {
    # The Flask extension (``Tasks(app)``) and ViUR's handler module mounted at /_tasks
    "Tasks": "core.extension",
    "TaskHandler": "core.tasks.handler",
    # Deferred calls and their retry policies
    "callDeferred": "core.tasks.deferred",
    "CallDeferred": "core.tasks.deferred",
    "noRetry": "core.tasks.deferred",
    "retry_n_times": "core.tasks.deferred",
    "Constant": "core.tasks.retry",
    "Linear": "core.tasks.retry",
    "Exponential": "core.tasks.retry",
    # A task's life in the caller's hands, and workflows
    "TaskHandle": "core.tasks.task_handle",
    "TaskStatus": "core.tasks.task_handle",
    "report_progress": "core.tasks.progress",
    "group": "core.tasks.workflows.groups",
    "chain": "core.tasks.workflows.chains",
    # Periodic and startup tasks
    "PeriodicTask": "core.tasks.periodic.declare",
    "removePeriodicTask": "core.tasks.periodic.declare",
    "Crontab": "core.tasks.periodic.schedule",
    "StartupTask": "core.tasks.startup",
    "runStartupTasks": "core.tasks.startup",
    # Query iterators
    "QueryIter": "core.tasks.queryiter.api",
    "MetaQueryIter": "core.tasks.queryiter.api",
    "DeleteEntitiesIter": "core.tasks.queryiter.api",
    # Callable tasks
    "CallableTask": "core.tasks.callable",
    "CallableTaskBase": "core.tasks.callable",
    # Hooks and what they are handed
    "TaskHook": "core.tasks.hooks",
    "TaskCall": "core.tasks.hooks",
    "TaskInfo": "core.tasks.auth.queue_headers",
    "Outcome": "core.tasks.outcome",
    # The codec, under its ViUR names
    "JsonKeyEncoder": "core.json",
    "jsonDecodeObjectHook": "core.json",
    # Errors a task raises or a caller catches
    "TaskError": "core.tasks.errors",
    "PermanentTaskFailure": "core.tasks.errors",
    "PayloadError": "core.tasks.errors",
    "RetryTask": "core.tasks.errors",
    "LockHeld": "core.tasks.errors",
    "DeferredArgumentError": "core.tasks.errors",
    "TaskFailed": "core.tasks.errors",
    "TaskCancelled": "core.tasks.errors",
    "UntrackedTask": "core.tasks.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from core.extension import Tasks
    from core.json import JsonKeyEncoder, jsonDecodeObjectHook
    from core.tasks.auth.queue_headers import TaskInfo
    from core.tasks.callable import CallableTask, CallableTaskBase
    from core.tasks.deferred import CallDeferred, callDeferred, noRetry, retry_n_times
    from core.tasks.errors import (
        DeferredArgumentError,
        LockHeld,
        PayloadError,
        PermanentTaskFailure,
        RetryTask,
        TaskCancelled,
        TaskError,
        TaskFailed,
        UntrackedTask,
    )
    from core.tasks.handler import TaskHandler
    from core.tasks.hooks import TaskCall, TaskHook
    from core.tasks.outcome import Outcome
    from core.tasks.periodic.declare import PeriodicTask, removePeriodicTask
    from core.tasks.periodic.schedule import Crontab
    from core.tasks.progress import report_progress
    from core.tasks.queryiter.api import DeleteEntitiesIter, MetaQueryIter, QueryIter
    from core.tasks.retry import Constant, Exponential, Linear
    from core.tasks.startup import StartupTask, runStartupTasks
    from core.tasks.task_handle import TaskHandle, TaskStatus
    from core.tasks.workflows.chains import chain
    from core.tasks.workflows.groups import group
