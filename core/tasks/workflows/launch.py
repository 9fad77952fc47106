"""Making a workflow's calls: a signature becomes an ordinary tracked deferred task, marked.

The mark (``"workflow"`` in the task's payload: the workflow's id, its role and index) is what
the workflow hook reads when the task ends; ``"group"`` puts the workflow's id on the task's
record, so its tasks can be listed by workflow.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.tasks.deferred import DeferredTarget, defer
from core.tasks.errors import TaskNotFound
from core.tasks.registry import declare_builtin, qualified_name
from core.tasks.runtime import TaskRuntime
from core.tasks.task_handle import TaskHandle
from core.tasks.workflows.signatures import Signature

MEMBER, CALLBACK, STEP = "member", "callback", "step"
#: The payload field that marks a task of a workflow.
FIELD = "workflow"
_NO_LEAD = object()


def mark(workflow_id: str, role: str, index: int, **layout: int) -> dict[str, Any]:
    """The payload fields of a workflow's task; a member also carries its group's size and shards."""
    return {FIELD: {"id": workflow_id, "role": role, "index": index, **layout}, "group": workflow_id}


def marker_of(payload: Any) -> tuple[str, str, int] | None:
    """``(workflow id, role, index)`` of a task's payload, or ``None`` for a task of no workflow."""
    found = payload.get(FIELD) if isinstance(payload, dict) else None
    if not isinstance(found, dict):
        return None
    workflow_id, role, index = found.get("id"), found.get("role"), found.get("index")
    if not isinstance(workflow_id, str) or role not in (MEMBER, CALLBACK, STEP) or not isinstance(index, int):
        return None
    return workflow_id, role, index


def layout_of(payload: Any) -> tuple[int, int] | None:
    """``(total, shards)`` a member's mark carries, so booking it needs no read of the root."""
    found = payload.get(FIELD) if isinstance(payload, dict) else None
    total, shards = (found.get("total"), found.get("shards")) if isinstance(found, dict) else (None, None)
    if isinstance(total, int) and isinstance(shards, int) and 0 < shards <= total:
        return total, shards
    return None


def send(runtime: TaskRuntime, sig: Signature, workflow_id: str, role: str, index: int, *,
         lead: Any = _NO_LEAD, name: str | None = None, layout: dict[str, int] | None = None) -> TaskHandle:
    """Defer ``sig`` as a tracked task of the workflow (``lead``: the result it receives first)."""
    target = runtime.registry.deferred.find(sig.target)
    if target is None:
        raise TaskNotFound(f"{sig.target} is not a registered deferred function")
    instance = None
    if target.kind == "method":
        instance = runtime.modules.get(sig.instance) if runtime.modules is not None and sig.instance else None
        if instance is None:
            raise TaskNotFound(f"no module is mounted at {sig.instance!r} for {sig.target}")
    args = sig.args if lead is _NO_LEAD else (lead, *sig.args)
    options = {k: v for k, v in sig.options.items() if v is not None}
    return defer(runtime, target, tuple(args), dict(sig.kwargs), instance=instance, _track=True, _name=name,
                 _extra=mark(workflow_id, role, index, **(layout or {})), **options)


def internal(func: Callable[..., Any]) -> DeferredTarget:
    """Declare a workflow's own task (bookkeeping, spawning): a built-in every app's registry gets."""
    target = DeferredTarget(qualified_name(func), func, "function")
    declare_builtin("deferred", target.name, target)
    return target


def task_name(workflow_id: str, suffix: str) -> str:
    """A deterministic queue name of one of a workflow's own tasks (ids are hex: always a valid name)."""
    return f"wf-{workflow_id}-{suffix}"
