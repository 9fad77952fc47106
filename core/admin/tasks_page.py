"""The Tasks page of the dashboard: tracked tasks with filters and pages, cancel and retry.

``GET /_tasks/admin/tasks?state=&queue=&target=&tag=`` lists task records newest first, a page at a
time by cursor, with the last hour's activity chart and (local backend) the queue depth.
``POST .../tasks/<id>/cancel`` cancels through the task's handle (``TaskHandle.fetch(id).cancel()``);
``POST .../tasks/<id>/retry`` sends a failed task again through its dead letter, as the Failed
tasks page does, and puts its record back to ``queued``. The views live in
:class:`~core.admin.dashboard.TaskAdmin`; this room has the data.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from core import db, key_ids
from core.admin import chart, paging
from core.admin.depth import local_queue_depth
from core.admin.records import FILTERS, STATES, describe_record, record_query
from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.errors import BadTaskRequest, NotFound
from core.tasks.records import FAILED, InvalidRecord, TaskRecord
from core.tasks.runtime import TaskRuntime
from core.tasks.task_handle import TaskHandle
from core.tasks.transports.base import QUEUE_NAME_RE

#: Task ids as Cloud Tasks allows them (the local and inline queues use the same).
TASK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")
_FILTER_LIMIT = 500


def parse_filters(args: Mapping[str, str]) -> dict[str, str]:
    """The filters of the request, checked (a 400 for values no record can have)."""
    filters = {name: (args.get(name) or "").strip() for name in FILTERS}
    if filters["state"] and filters["state"] not in STATES:
        raise BadTaskRequest(f"unknown state {filters['state'][:40]!r}; use one of {', '.join(STATES)}")
    if filters["queue"] and not QUEUE_NAME_RE.match(filters["queue"]):
        raise BadTaskRequest("malformed queue name")
    for name in ("target", "tag"):
        value = filters[name]
        if len(value) > _FILTER_LIMIT or any(ord(c) < 32 for c in value):
            raise BadTaskRequest(f"malformed {name} filter")
    return filters


def page_data(runtime: TaskRuntime, args: Mapping[str, str], path: str) -> dict[str, Any]:
    """Everything the Tasks page shows for this request."""
    filters = parse_filters(args)
    page = paging.paginate(record_query(filters), describe_record, path=path)
    activity = chart.last_hour()
    return {"tasks": page.rows, "pages": page.as_json(), "filters": filters, "states": STATES,
            "activity": activity.as_json(), "chart": chart.render_svg(activity),
            "depth": local_queue_depth(runtime)}


def checked_task_id(task_id: str | None) -> str:
    return key_ids.key_id(task_id, what="task id", pattern=TASK_ID_RE)


def cancel_task(task_id: str) -> str:
    """Cancel a tracked task through its handle; the message for the person who asked."""
    if _record(task_id) is None:
        raise NotFound(f"there is no tracked task {task_id}")
    changed = TaskHandle.fetch(task_id).cancel()
    return f"Task {task_id} cancelled." if changed is not False else f"Task {task_id} had already finished."


def retry_task(runtime: TaskRuntime, task_id: str, retry_letter: Callable[[TaskRuntime, db.Key], bool]) -> str:
    """Send a failed task again from its dead letter; the message for the person who asked.

    Resending the letter reopens the task's record in the same transaction (a failed record
    would make the handler refuse the task as ended) with a fresh retry budget: attempts count from one again.
    """
    letters = db.Query(DEAD_LETTER_KIND).filter("task_id", "=", task_id).keys_only().run(limit=1)

    target: list[str] = []

    def retry() -> bool:
        record = _record(task_id)
        if record is None:
            raise NotFound(f"there is no tracked task {task_id}")
        periodic = record.description if record.kind == "periodic" else None
        target[:] = [str(periodic or record.target or "The task")]
        return record.state is FAILED and bool(letters) and retry_letter(runtime, letters[0].key)

    if not db.run_in_transaction(retry):
        return f"Task {task_id} has no failed request stored to send again."
    return f"{target[0]}: Task {task_id} queued again."


def _record(task_id: str) -> TaskRecord | None:
    """The task's record; a 400 naming it when the stored record is not one this version can read."""
    try:
        return TaskRecord.fetch(task_id)
    except InvalidRecord as exc:
        raise BadTaskRequest(str(exc)) from None
