"""Admin pages of the task module: callable tasks (``/_tasks/list``, ``/_tasks/execute/<key>``)
and the task dashboard module (:class:`TaskAdmin`, mounted by an app at ``_tasks/admin``)."""
from __future__ import annotations

from core.admin.dashboard import TaskAdmin
from core.admin.views import execute_callable_task, list_callable_tasks

__all__ = ["TaskAdmin", "execute_callable_task", "list_callable_tasks"]
