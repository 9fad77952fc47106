"""Groups: members run in parallel as ordinary tracked tasks; a callback runs once after all ended.

``group(send_invoice.s(k) for k in keys).then(report.s(month), policy="all_succeeded").start()``

- ``policy="all_succeeded"`` (the default): the callback runs only if every member succeeded,
  with the list of their results (in member order) as its first argument; otherwise the group
  ends ``failed`` and the callback never runs.
- ``policy="always"``: the callback runs in any case, with a summary as its first argument:
  ``{"total", "succeeded", "failed", "results": [result or None, ...], "errors": [{"index",
  "error"}, ...]}``.

**Starting.** The members' signatures are stored in batches of ``SPAWN_BATCH``; the transaction
that writes the group's root also queues the first spawn task (so a group exists if and only if
it will be spawned). Spawn tasks queue the members a few per transaction, each transaction also
moving the batch's mark past them, so a member is queued once however often its spawn task runs.

**Ending.** When a member's task has ended (its record says so), its index is added to its shard's
set in a transaction, with its result; the transaction that completes a shard's set adds the shard
to the root's set of complete shards; the one that completes that set moves the root to
``complete``. The root's transaction that leaves ``complete`` sends the callback (through the
outbox, with a deterministic task name): Datastore lets exactly one such commit through.
"""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now
from core.tasks import records
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.workflows import launch, store
from core.tasks.workflows.handle import GroupHandle
from core.tasks.workflows.signatures import Signature, check_complete

#: Members one spawn task queues.
SPAWN_BATCH = 200
#: Members queued per transaction: each has its record and its request, and Datastore allows 25
#: entity groups in one transaction (the batch's own entity is the 25th).
SPAWN_STEP = 11
BATCH_KIND = "_tasks_workflow_batch"


@dataclasses.dataclass(frozen=True)
class Group:
    """Members and, optionally, a callback: a description until :meth:`start`."""

    members: tuple[Signature, ...]
    callback: Signature | None = None
    policy: str = store.ALL_SUCCEEDED

    def then(self, callback: Signature, *, policy: str = store.ALL_SUCCEEDED) -> Group:
        """This group with ``callback`` to run once after every member ended (see the module's policies)."""
        if not isinstance(callback, Signature):
            raise TypeError(f"then() takes a signature (func.s(...)), got {callback!r}")
        if policy not in store.POLICIES:
            raise ValueError(f"unknown group policy {policy!r}: use {' or '.join(store.POLICIES)}")
        return dataclasses.replace(self, callback=callback, policy=policy)

    def start(self) -> GroupHandle:
        """Queue the members; returns the group's handle (durable when this returns, or with the transaction)."""
        return start_group(get_runtime(), self)


def group(members: Iterable[Signature]) -> Group:
    """A group of ``members`` (signatures: ``send_invoice.s(key)``)."""
    found = tuple(members)
    for member in found:
        if not isinstance(member, Signature):
            raise TypeError(f"a group's members are signatures (func.s(...)), got {member!r}")
    if not found:
        raise ValueError("a group needs at least one member")
    return Group(found)


def start_group(runtime: TaskRuntime, spec: Group) -> GroupHandle:
    for member in spec.members:
        check_complete(runtime, member, receives_result=False)
    if spec.callback is not None:
        check_complete(runtime, spec.callback, receives_result=True)
    workflow_id = uuid.uuid4().hex
    total = len(spec.members)
    targets = sorted({m.target for m in spec.members})
    label = targets[0] if len(targets) == 1 else f"{targets[0]} and {len(targets) - 1} more"
    root = store.new_root(workflow_id, kind=store.GROUP, total=total, label=label, shards=store.shard_count(total),
                          policy=spec.policy,
                          callback=tagged_json.dumps(spec.callback.to_json()) if spec.callback else None)
    batches = []
    for number, first in enumerate(range(0, total, SPAWN_BATCH)):
        entity = db.Entity(db.key(BATCH_KIND, f"{workflow_id}.{number}"), exclude_from_indexes=("calls",))
        calls = [m.to_json() for m in spec.members[first:first + SPAWN_BATCH]]
        entity.update({"workflow": workflow_id, "number": number, "first": first, "count": len(calls),
                       "calls": tagged_json.dumps(calls), "spawned": 0})
        batches.append(entity)
    root["batches"] = len(batches)
    store.put_chunked(batches)  # unreachable until the root exists

    def write_root() -> None:
        db.put(root)
        _send_spawn(runtime, workflow_id, 0)

    db.run_in_transaction(write_root)
    return GroupHandle(workflow_id)


def _send_spawn(runtime: TaskRuntime, workflow_id: str, number: int) -> None:
    launch.defer(runtime, SPAWN, (workflow_id, number), {}, _name=launch.task_name(workflow_id, f"b{number}"))


def spawn_batch(workflow_id: str, number: int) -> int:
    """Queue the members of one stored batch, and the spawn tasks of two more; returns how many it queued.

    The spawn tasks form a binary tree (batch ``n`` starts ``2n + 1`` and ``2n + 2``), so a group
    of many batches is queued in a few steps of parallel tasks. Members are queued
    ``SPAWN_STEP`` at a time, each step one transaction that writes their records and requests and
    moves the batch's ``spawned`` mark past them: a spawn task that runs again (a duplicate push, a
    crash halfway) queues no member twice, and one that died halfway goes on where it stopped.
    """
    runtime = get_runtime()
    root = db.get(store.root_key(workflow_id))
    key = db.key(BATCH_KIND, f"{workflow_id}.{number}")
    if root is None:
        return 0
    for child in (2 * number + 1, 2 * number + 2):
        if child < int(root.get("batches") or 0):
            _send_spawn(runtime, workflow_id, child)

    def step() -> int:
        batch = db.get(key)
        if batch is None or batch.get("calls") is None:
            return 0
        calls = tagged_json.loads(batch["calls"])
        first, done = int(batch["first"]), int(batch.get("spawned") or 0)
        chosen = calls[done:done + SPAWN_STEP]
        for offset, call in enumerate(chosen, start=done):
            launch.send(runtime, Signature.from_json(call), workflow_id, launch.MEMBER, first + offset,
                        layout=layout)
        done += len(chosen)
        batch.update({"spawned": done, "calls": batch["calls"] if done < len(calls) else None})
        db.put(batch)
        return len(chosen)

    layout = {"total": int(root["total"]), "shards": int(root["shards"])}
    queued = 0
    while (sent := db.run_in_transaction(step)) > 0:
        queued += sent
    return queued


SPAWN = launch.internal(spawn_batch)


# --- a member ended ----------------------------------------------------------------------------

def member_ended(runtime: TaskRuntime, workflow_id: str, total: int, shards: int, index: int,
                 record: records.TaskRecord) -> None:
    """Book member ``index`` as ended (idempotent), then close its shard and the group if it was the last.

    A shard found complete is closed again every time (its member may be a redelivery after a crash
    that came before the root heard of it); closing is idempotent too.
    """
    if not 0 <= index < total:
        return
    succeeded = record.state is records.SUCCEEDED
    member = store.new_member(workflow_id, index, task_id=record.id,
                              state=store.SUCCEEDED if succeeded else store.FAILED,
                              result=record.result if succeeded else None,
                              error=None if succeeded else str(record.error or record.state))
    shard = store.shard_of(index, shards)
    size = store.shard_size(shard, total, shards)

    def mark() -> bool:
        entity = db.get(store.shard_key(workflow_id, shard)) or store.new_shard(workflow_id, shard)
        ended = set(entity.get("succeeded") or []) | set(entity.get("failed") or [])
        if index not in ended:
            entity["succeeded" if succeeded else "failed"] = [*(entity.get("succeeded" if succeeded else "failed")
                                                                or []), index]
            ended.add(index)
            db.put([entity, member])
        return len(ended) >= size

    if db.run_in_transaction(mark):
        close_shard(runtime, workflow_id, shard)


def close_shard(runtime: TaskRuntime, workflow_id: str, shard: int) -> None:
    """Add a complete shard to the root's set; the last one moves the group to ``complete``."""
    def close() -> str | None:
        root = db.get(store.root_key(workflow_id))
        if root is None:
            return None
        complete = list(root.get("complete_shards") or [])
        if shard not in complete:
            complete.append(shard)
            root.update({"complete_shards": complete, "updated": runtime.clock.now()})
            if len(complete) >= int(root["shards"]) and root.get("state") == store.RUNNING:
                root["state"] = store.COMPLETE
            db.put(root)
        return str(root.get("state"))

    if db.run_in_transaction(close) == store.COMPLETE:
        finish(runtime, workflow_id)


def collect(workflow_id: str, total: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every member's result (``None`` for a failed one) and the failures, in member order."""
    results: list[Any] = []
    errors: list[dict[str, Any]] = []
    for index, member in enumerate(store.members(workflow_id, total)):
        if member is not None and member.get("state") == store.SUCCEEDED:
            results.append(records.decode_result(member.get("result")))
        else:
            results.append(None)
            errors.append({"index": index, "error": member.get("error") if member is not None else "not ended"})
    return results, errors


def finish(runtime: TaskRuntime, workflow_id: str) -> None:
    """Decide a complete group's end: send its callback (once), or end it without one."""
    root = db.get(store.root_key(workflow_id))
    if root is None or root.get("state") != store.COMPLETE:
        return
    total = int(root["total"])
    results, errors = collect(workflow_id, total)
    callback = Signature.from_json(tagged_json.loads(root["callback"])) if root.get("callback") else None
    policy = root.get("policy") or store.ALL_SUCCEEDED

    def decide() -> None:
        current = db.get(store.root_key(workflow_id))
        if current is None or current.get("state") != store.COMPLETE:
            return  # decided by another delivery
        now = runtime.clock.now()
        current["updated"] = now
        if errors and (callback is None or policy == store.ALL_SUCCEEDED):
            current.update({"state": store.FAILED, "ended": now,
                            "error": f"{len(errors)} of {total} members failed; first: member "
                                     f"{errors[0]['index']}: {errors[0]['error']}"[:1500]})
        elif callback is None:
            current.update({"state": store.SUCCEEDED, "ended": now})
        else:
            first: Any = results if policy == store.ALL_SUCCEEDED else {
                "total": total, "succeeded": total - len(errors), "failed": len(errors), "results": results,
                "errors": errors}
            handle = launch.send(runtime, callback, workflow_id, launch.CALLBACK, 0, lead=first,
                                 name=launch.task_name(workflow_id, "cb"))
            current.update({"state": store.CALLBACK_SENT, "callback_task": handle.id})
        db.put(current)

    db.run_in_transaction(decide)


def callback_ended(root: db.Entity, record: records.TaskRecord) -> None:
    """The callback's task ended: the group ends with it."""
    workflow_id = str(root.key.name)

    def end() -> None:
        current = db.get(store.root_key(workflow_id))
        if current is None or current.get("state") != store.CALLBACK_SENT:
            return
        if current.get("callback_task") not in (None, record.id):
            return
        now = utc_now()
        succeeded = record.state is records.SUCCEEDED
        current.update({"state": store.SUCCEEDED if succeeded else store.FAILED, "ended": now, "updated": now,
                        "error": None if succeeded else f"the callback failed: {record.error}"[:1500]})
        db.put(current)

    db.run_in_transaction(end)
