"""The Workflows page of the dashboard: groups and chains with their progress, newest first.

``GET /_tasks/admin/workflows`` (``?kind=group|chain`` to filter) lists them a page at a time by
cursor; each row shows done / failed / total from the workflow's handle status (a group's shards
are read in one batch per row). The view lives in :class:`~core.admin.dashboard.TaskAdmin`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core import db
from core.admin import paging
from core.tasks.errors import BadTaskRequest
from core.tasks.workflows import handle, store

KINDS = (store.GROUP, store.CHAIN)
#: States in which a workflow is still moving (the page reloads itself while one is listed).
ACTIVE_STATES = (store.RUNNING, store.COMPLETE, store.CALLBACK_SENT)


def describe_workflow(entity: db.Entity) -> dict[str, Any]:
    """A root entity as a row: its status, and the callback's or failed step's details."""
    try:
        status = handle.status_of(entity)
    except (KeyError, TypeError, ValueError):
        return {"id": str(entity.key.id_or_name), "kind": entity.get("kind"), "state": "unknown", "done": 0,
                "failed": 0, "total": 0, "label": "(unreadable workflow)", "percent": None, "created": None,
                "ended": None, "error": None, "failed_step": None, "policy": None, "callback_task": None}
    row = dataclasses.asdict(status)
    row.update({"percent": status.percent, "policy": entity.get("policy"),
                "callback_task": entity.get("callback_task")})
    return row


def page_data(args: Mapping[str, str], path: str) -> dict[str, Any]:
    kind = (args.get("kind") or "").strip()
    if kind and kind not in KINDS:
        raise BadTaskRequest(f"unknown workflow kind {kind[:20]!r}; use group or chain")
    query = db.Query(store.ROOT_KIND)
    if kind:
        query = query.filter("kind =", kind)
    page = paging.paginate(query.order("-created"), describe_workflow, path=path)
    active = any(row["state"] in ACTIVE_STATES for row in page.rows)
    return {"workflows": page.rows, "pages": page.as_json(), "kind": kind, "kinds": KINDS, "active": active}
