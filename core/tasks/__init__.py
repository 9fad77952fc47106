"""Deferred, periodic, startup and callable tasks and query iterators (ViUR's ``core.tasks``).

The ViUR names are the public contract; snake_case aliases sit beside them.
"""
from __future__ import annotations

from core.json import JsonKeyEncoder, jsonDecodeObjectHook
from core.tasks import executor as _executor  # registers the "deferred" task kind
from core.tasks.callable import CallableTask, CallableTaskBase, callable_task
from core.tasks.deferred import (CallDeferred, TaskHandle, call_deferred, callDeferred, no_retry, noRetry,
                                 retry_n_times)
from core.tasks.dispatch import sweep_outbox
from core.tasks.errors import (BadTaskRequest, DeferredArgumentError, DuplicateTask, EnqueueError, Forbidden,
                               InvalidScheduleSpecification, NotFound, PayloadError, PermanentTaskFailure,
                               RetryTask, TaskError, TaskNotFound)
from core.tasks.handler import TaskHandler
from core.tasks.periodic import (PeriodicTask, find_bound_task, periodic_overview, periodic_task,
                                 remove_periodic_task, removePeriodicTask)
from core.tasks.registry import TaskRegistry, active_registry, isolated_registry
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.schedule import Crontab, Month, Weekday
from core.tasks.startup import StartupTask, run_startup_tasks, runStartupTasks, startup_task

__all__ = [
    "callDeferred", "CallDeferred", "call_deferred", "noRetry", "no_retry", "retry_n_times", "TaskHandle",
    "TaskHandler", "JsonKeyEncoder", "jsonDecodeObjectHook", "PermanentTaskFailure", "RetryTask",
    "TaskError", "TaskNotFound", "PayloadError", "BadTaskRequest", "Forbidden", "NotFound",
    "DeferredArgumentError", "DuplicateTask", "EnqueueError", "InvalidScheduleSpecification",
    "TaskRegistry", "active_registry", "isolated_registry", "TaskRuntime", "get_runtime", "sweep_outbox",
    "PeriodicTask", "periodic_task", "removePeriodicTask", "remove_periodic_task", "find_bound_task",
    "periodic_overview", "Crontab", "Weekday", "Month", "StartupTask", "startup_task", "runStartupTasks",
    "run_startup_tasks", "CallableTask", "CallableTaskBase", "callable_task",
]
del _executor
