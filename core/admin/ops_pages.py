"""The operators' pages of the dashboard: queues (pause, resume, purge, their tasks, run one now),
metrics per target, and failed tasks in bulk. Flask-free data and actions; ``dashboard`` routes them."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from core.clock import utc_now
from core.key_ids import key_id
from core.tasks import deadletters, metrics_store, queue_admin
from core.tasks.errors import BadTaskRequest
from core.tasks.queues import parse_age
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import TASK_NAME_RE

#: Letters one bulk action of the page takes; the page says how many are left (run it again).
BULK_PAGE_LIMIT = 400
#: Windows of the metrics page: name, bucket resolution, length.
WINDOWS = (("Last hour", "minute", datetime.timedelta(hours=1)), ("Last day", "hour", datetime.timedelta(days=1)))


def queues_data(runtime: TaskRuntime, queue: str | None, cursor: str | None) -> dict[str, Any]:
    """Every queue with its state and waiting tasks; with ``queue``, one page of its tasks."""
    data: dict[str, Any] = {"queues": [status.__dict__ for status in queue_admin.statuses(runtime)],
                            "queue": None, "tasks": [], "cursor": None}
    if queue is not None:
        queue_admin.known_queue(runtime, queue)
        listings, next_cursor = queue_admin.list_tasks(runtime, queue, limit=50, cursor=cursor or None)
        data.update({"queue": queue, "tasks": [queue_admin.describe(item) for item in listings],
                     "cursor": next_cursor})
    return data


def queue_action(runtime: TaskRuntime, queue: str, action: str, form: Mapping[str, str]) -> tuple[str, bool]:
    """Pause, resume, purge or run one task of ``queue``: the message for the operator and whether it changed."""
    queue_admin.known_queue(runtime, queue)
    if action == "pause":
        queue_admin.pause(runtime, queue)
        return f"Queue {queue} paused: its tasks wait until it is resumed.", True
    if action == "resume":
        queue_admin.resume(runtime, queue)
        return f"Queue {queue} resumed.", True
    if action == "purge":
        purged = queue_admin.purge(runtime, queue)
        return f"Queue {queue} purged" + ("." if purged is None else f": {purged} task(s) deleted."), True
    name = key_id(form.get("task"), what="task name", pattern=TASK_NAME_RE)
    ran = queue_admin.run_now(runtime, queue, name)
    return (f"Task {name} of queue {queue} runs now." if ran else f"Queue {queue} holds no task {name} to run."), ran


def metrics_data(now: datetime.datetime | None = None) -> dict[str, Any]:
    """Per window and target: runs, throughput, p50 / p95 duration, failure rate, dead letters."""
    now = now or utc_now()
    windows = []
    for title, resolution, length in WINDOWS:
        buckets = metrics_store.window(resolution, metrics_store.bucket_start(now - length, resolution))
        totals = metrics_store.totals(buckets)
        minutes = length.total_seconds() / 60
        rows: list[dict[str, Any]] = [{"queue": queue, "target": target, "runs": stats.runs, "enqueued": stats.enqueued,
                 "per_minute": stats.runs / minutes, "p50": stats.percentile(0.5), "p95": stats.percentile(0.95),
                 "p50_text": _seconds(stats.percentile(0.5)), "p95_text": _seconds(stats.percentile(0.95)),
                 "failure_rate": stats.failure_rate, "retried": stats.retried, "dead_letters": stats.dead_letters,
                 "skipped": stats.skipped}
                for (queue, target), stats in sorted(totals.items(), key=lambda item: -item[1].runs)]
        busiest = max((stats.runs for stats in totals.values()), default=0)
        windows.append({"title": title, "rows": rows, "busiest": busiest})
    return {"windows": windows}


def _seconds(value: float | None) -> str:
    """A duration bucket's bound as people read it: ``≤ 25 ms``, ``≤ 2.5 s``, ``> 30 min``."""
    if value is None:
        return "—"
    if value == float("inf"):
        return f"> {metrics_store.DURATION_BOUNDS[-1] / 60:g} min"
    return f"≤ {value * 1000:g} ms" if value < 1 else f"≤ {value:g} s"


def letter_filter(form: Mapping[str, str]) -> deadletters.LetterFilter:
    """The bulk form's fields as a filter (empty fields select everything); a bad age is a 400."""
    def field(name: str) -> str | None:
        value = (form.get(name) or "").strip()
        return value[:300] or None

    older = field("older_than")
    try:
        older_than = parse_age(older) if older else None
    except ValueError:
        raise BadTaskRequest(f"age {older!r}: use a duration like 30m, 2h or 1d") from None
    return deadletters.LetterFilter(target=field("target"), queue=field("queue"), error_type=field("error_type"),
                                    older_than=older_than)


def bulk_action(runtime: TaskRuntime, action: str, form: Mapping[str, str]) -> tuple[str, int]:
    """Retry or discard (up to :data:`BULK_PAGE_LIMIT` of) the letters the form selects."""
    selection = letter_filter(form)
    result = deadletters.bulk(runtime, action, selection, limit=BULK_PAGE_LIMIT)
    left = sum(1 for _ in deadletters.matching(selection))
    verb = "retried" if action == "retry" else "discarded"
    message = f"{result.done} failed task(s) {verb} ({selection.describe()})."
    if result.refused:
        message += f" {len(result.refused)} could not be: {result.refused[0]}"
    if left > len(result.refused):
        message += f" {left} still match: run it again to go on."
    return message, result.done
