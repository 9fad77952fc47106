"""The hook that books a workflow's task when it has ended, whatever ended it.

After every request of a task marked by a workflow (see :mod:`.launch`) that was answered 2xx, the
task's record decides: if it has ended (succeeded, failed, cancelled) the workflow books it. That
covers the first run, a retry that succeeded, a dead letter, and a duplicate push that was only
answered "ended before": so a process that died after the task's record was written but before
its bookkeeping (no answer, so the queue delivers again) is booked by the next delivery. A non-2xx
answer books nothing: the queue will deliver again.

Bookkeeping that fails here (the Datastore refused a transaction) is handed to a task with a
deterministic name, which the queue retries until it succeeds. Booking is idempotent, so doing
it twice is harmless.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from core import db
from core.tasks import records
from core.tasks.hooks import TaskCall, TaskHook
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.workflows import chains, groups, launch, store

if TYPE_CHECKING:
    from core.tasks.outcome import Outcome

log = logging.getLogger(__name__)


def book(runtime: TaskRuntime, workflow_id: str, role: str, index: int, task_id: str,
         layout: tuple[int, int] | None = None) -> None:
    """Book one task of a workflow if its record says it has ended (idempotent).

    A member whose mark carries its group's ``layout`` (total, shards) is booked without reading
    the group's root: a task record read and one shard transaction.
    """
    record = records.TaskRecord.fetch(task_id)
    if record is None or not record.finished:
        return
    if role == launch.MEMBER and layout is not None:
        groups.member_ended(runtime, workflow_id, *layout, index, record)
        return
    root = db.get(store.root_key(workflow_id))
    if root is None:
        log.warning("task %s belongs to workflow %s, which does not exist (expired?)", task_id, workflow_id)
        return
    if role == launch.STEP:
        chains.step_ended(runtime, root, index, record)
    elif role == launch.CALLBACK:
        groups.callback_ended(root, record)
    elif root.get("state") == store.COMPLETE:
        groups.finish(runtime, workflow_id)  # left undecided by a delivery that died after completing it
    else:
        groups.member_ended(runtime, workflow_id, int(root["total"]), int(root["shards"]), index, record)


def book_task(workflow_id: str, role: str, index: int, task_id: str) -> None:
    """The task that books what the hook could not (retried by the queue until it can)."""
    book(get_runtime(), workflow_id, role, index, task_id)


BOOK = launch.internal(book_task)


class WorkflowHook(TaskHook):
    """Books workflow tasks that ended, and names the workflow in their dead letters."""

    payload_field = launch.FIELD

    def after_run(self, task: TaskCall, outcome: Outcome) -> None:
        marker = launch.marker_of(task.payload)
        if marker is None or task.id is None or outcome.status >= 300:
            return
        workflow_id, role, index = marker
        runtime = get_runtime()
        try:
            book(runtime, workflow_id, role, index, task.id, launch.layout_of(task.payload))
        except Exception:
            log.exception("could not book task %s of workflow %s now; a task will", task.id, workflow_id)
            launch.defer(runtime, BOOK, (workflow_id, role, index, task.id), {},
                         _name=launch.task_name(workflow_id, f"{role[0]}{index}-{task.id[:40]}"))

    def on_dead_letter(self, task: TaskCall, outcome: Outcome) -> None:
        marker = launch.marker_of(task.payload)
        if marker is None or outcome.dead_letter is None:
            return
        workflow_id, role, index = marker
        letter = db.get(outcome.dead_letter)
        if letter is None:
            return
        root = db.get(store.root_key(workflow_id))
        kind = root.get("kind") if root is not None else None
        letter.update({"workflow": workflow_id, "workflow_kind": kind, "workflow_step": index,
                       "workflow_role": role})
        if root is not None and role == launch.STEP:
            letter["error"] = f"{chains.describe_step(root, index)}: {letter.get('error')}"
        db.put(letter)


def install(runtime: TaskRuntime) -> Any:
    """Give ``runtime`` the workflow hook (once); the workflows' own tasks are built-ins of every registry."""
    for hook in runtime.hooks:
        if isinstance(hook, WorkflowHook):
            return hook
    return runtime.add_hook(WorkflowHook())
