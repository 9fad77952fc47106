"""The Datastore entities of groups and chains, and how a group's bookkeeping is sharded.

- ``_tasks_workflow`` (key: the workflow id): the root. Kind (group / chain), state, total,
  policy, the callback or the steps, the number of shards, which shards are complete.
- ``_tasks_workflow_shard`` (key ``<id>.<shard>``): the members of one shard that ended, as two
  sets of indices (``succeeded``, ``failed``). Member ``i`` belongs to shard ``i % shards``, so
  members that run at the same time (neighbouring indices) write to different shards.
- ``_tasks_workflow_member`` (key ``<id>.<index>``): one ended member or step: its state, result
  (``core.json`` text) and error, copied from its task record.

Every write is idempotent: adding an index to a set that has it changes nothing, and a member
entity is rewritten with the same content. Nothing counts, so nothing can drift.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from core import db
from core.clock import utc_now

ROOT_KIND, SHARD_KIND, MEMBER_KIND = "_tasks_workflow", "_tasks_workflow_shard", "_tasks_workflow_member"
GROUP, CHAIN = "group", "chain"
ALL_SUCCEEDED, ALWAYS = "all_succeeded", "always"
POLICIES = (ALL_SUCCEEDED, ALWAYS)
#: Root states: members run; all ended and the callback is being decided; then its fate.
RUNNING, COMPLETE, CALLBACK_SENT, SUCCEEDED, FAILED = "running", "complete", "callback_sent", "succeeded", "failed"
ENDED_STATES = frozenset({SUCCEEDED, FAILED})
#: Members per shard a group aims at, and the fewest shards a group of many members gets.
SHARD_MEMBERS, MIN_SHARDS = 100, 16
#: Member entities fetched per Datastore call when a group's results are collected.
FETCH_BATCH = 1000
_UNINDEXED = ("callback", "steps", "complete_shards", "result", "error", "label")


def shard_count(total: int) -> int:
    """How many shards a group of ``total`` members gets (each holds at most ``SHARD_MEMBERS``)."""
    return max(1, min(total, max(MIN_SHARDS, math.ceil(total / SHARD_MEMBERS))))


def shard_of(index: int, shards: int) -> int:
    return index % shards


def shard_size(shard: int, total: int, shards: int) -> int:
    """Members in ``shard``: the indices ``shard, shard + shards, ...`` below ``total``."""
    return len(range(shard, total, shards))


def root_key(workflow_id: str) -> db.Key:
    return db.key(ROOT_KIND, workflow_id)


def shard_key(workflow_id: str, shard: int) -> db.Key:
    return db.key(SHARD_KIND, f"{workflow_id}.{shard}")


def member_key(workflow_id: str, index: int) -> db.Key:
    return db.key(MEMBER_KIND, f"{workflow_id}.{index}")


def new_root(workflow_id: str, *, kind: str, total: int, label: str, **values: Any) -> db.Entity:
    now = utc_now()
    entity = db.Entity(root_key(workflow_id), exclude_from_indexes=_UNINDEXED)
    entity.update({"kind": kind, "state": RUNNING, "total": total, "label": label[:300], "created": now,
                   "updated": now, "ended": None, "shards": 0, "complete_shards": [], "policy": None,
                   "callback": None, "callback_task": None, "steps": None, "current": 0, "failed_step": None,
                   "result": None, "error": None})
    entity.update(values)
    return entity


def new_shard(workflow_id: str, shard: int) -> db.Entity:
    entity = db.Entity(shard_key(workflow_id, shard), exclude_from_indexes=("succeeded", "failed"))
    entity.update({"workflow": workflow_id, "shard": shard, "succeeded": [], "failed": []})
    return entity


def new_member(workflow_id: str, index: int, *, task_id: str | None, state: str, result: str | None,
               error: str | None) -> db.Entity:
    entity = db.Entity(member_key(workflow_id, index), exclude_from_indexes=("result", "error"))
    entity.update({"workflow": workflow_id, "index": index, "task_id": task_id, "state": state,
                   "result": result, "error": error})
    return entity


def progress(root: db.Entity) -> tuple[int, int]:
    """``(succeeded, failed)`` members or steps of a workflow so far."""
    if root.get("kind") == CHAIN:
        failed = 1 if root.get("failed_step") is not None else 0
        return int(root.get("current") or 0), failed
    workflow_id = str(root.key.name)
    shards = db.get([shard_key(workflow_id, s) for s in range(int(root.get("shards") or 0))])
    done = sum(len(s.get("succeeded") or []) for s in shards if s is not None)
    failed = sum(len(s.get("failed") or []) for s in shards if s is not None)
    return done, failed


def members(workflow_id: str, total: int) -> Iterator[db.Entity | None]:
    """The member entities of a workflow in index order (``None`` where a member has not ended)."""
    for start in range(0, total, FETCH_BATCH):
        yield from db.get([member_key(workflow_id, i) for i in range(start, min(total, start + FETCH_BATCH))])


def put_chunked(entities: Sequence[db.Entity], size: int = 400) -> None:
    """Write many entities in commits production accepts (inside a transaction: all in it)."""
    if db.is_in_transaction():
        db.put(entities)
        return
    for start in range(0, len(entities), size):
        db.put(entities[start:start + size])
