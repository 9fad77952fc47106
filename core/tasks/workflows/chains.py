"""Chains: each step starts when the one before it succeeded, with its result as first argument.

``chain(fetch.s(url), parse.s(), store.s(bucket)).start()`` runs ``fetch(url)``, then
``parse(<fetch's result>)``, then ``store(<parse's result>, bucket)``. Every step is an ordinary
tracked task. A step that fails for good (at its retry limit, or permanently) stops the chain:
no later step runs, the chain ends ``failed`` with the step's index, and the step's dead letter
carries the chain's id and the step's index (``workflow``, ``workflow_step``).

The root's transaction that books step ``i`` (only while the root waits for step ``i``) also
sends step ``i + 1``, through the outbox: a step's duplicate push or a repeated bookkeeping finds
the root moved on and sends nothing.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from core import db
from core import json as tagged_json
from core.tasks import records
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.workflows import launch, store
from core.tasks.workflows.handle import ChainHandle
from core.tasks.workflows.signatures import Signature, check_complete

#: Steps a chain may have (its signatures live in the root entity).
MAX_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Chain:
    """Steps to run one after another: a description until :meth:`start`."""

    steps: tuple[Signature, ...]

    def start(self) -> ChainHandle:
        """Queue the first step; returns the chain's handle."""
        return start_chain(get_runtime(), self)


def chain(*steps: Signature) -> Chain:
    """A chain of ``steps`` (signatures: ``parse.s()``); every step after the first receives a result."""
    for step in steps:
        if not isinstance(step, Signature):
            raise TypeError(f"a chain's steps are signatures (func.s(...)), got {step!r}")
    if not steps:
        raise ValueError("a chain needs at least one step")
    if len(steps) > MAX_STEPS:
        raise ValueError(f"a chain has at most {MAX_STEPS} steps, got {len(steps)}")
    return Chain(tuple(steps))


def start_chain(runtime: TaskRuntime, spec: Chain) -> ChainHandle:
    for index, step in enumerate(spec.steps):
        check_complete(runtime, step, receives_result=index > 0)
    workflow_id = uuid.uuid4().hex
    label = " → ".join(s.target.rsplit(".", 1)[-1] for s in spec.steps)
    root = store.new_root(workflow_id, kind=store.CHAIN, total=len(spec.steps), label=label,
                          steps=tagged_json.dumps([s.to_json() for s in spec.steps]))

    def write() -> None:
        db.put(root)
        launch.send(runtime, spec.steps[0], workflow_id, launch.STEP, 0)

    db.run_in_transaction(write)
    return ChainHandle(workflow_id)


def step_ended(runtime: TaskRuntime, root: db.Entity, index: int, record: records.TaskRecord) -> None:
    """Book step ``index`` as ended and send the next one, once (idempotent)."""
    workflow_id = str(root.key.name)
    succeeded = record.state is records.SUCCEEDED

    def advance() -> None:
        current = db.get(store.root_key(workflow_id))
        if current is None or current.get("state") != store.RUNNING or int(current.get("current") or 0) != index:
            return  # booked before: a duplicate push or a repeated bookkeeping
        now = runtime.clock.now()
        total = int(current["total"])
        member = store.new_member(workflow_id, index, task_id=record.id,
                                  state=store.SUCCEEDED if succeeded else store.FAILED,
                                  result=record.result if succeeded else None,
                                  error=None if succeeded else str(record.error or record.state))
        current["updated"] = now
        if not succeeded:
            current.update({"state": store.FAILED, "failed_step": index, "ended": now,
                            "error": f"step {index} failed: {member['error']}"[:1500]})
        elif index + 1 < total:
            steps = tagged_json.loads(current["steps"])
            following = Signature.from_json(steps[index + 1])
            launch.send(runtime, following, workflow_id, launch.STEP, index + 1,
                        lead=record.value())
            current["current"] = index + 1
        else:
            current.update({"state": store.SUCCEEDED, "current": total, "ended": now,
                            "result": record.result})
        db.put([current, member])

    db.run_in_transaction(advance)


def describe_step(root: db.Entity, index: int) -> str:
    """``step 2 of 3 (module.parse) of chain <id>``: how a dead letter names its chain."""
    try:
        target = tagged_json.loads(root["steps"])[index]["target"]
    except (KeyError, IndexError, TypeError, ValueError):
        target = "?"
    return f"step {index} of {root.get('total')} ({target}) of chain {root.key.name}"


def steps_of(root: db.Entity) -> list[dict[str, Any]]:
    try:
        return list(tagged_json.loads(root["steps"]))
    except (KeyError, TypeError, ValueError):
        return []
