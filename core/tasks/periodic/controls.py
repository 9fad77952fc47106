"""An operator's controls of periodic tasks: run one now, pause one, resume it.

A run now is claimed like a cron ping claims one (a new generation, pending until it ends, queued
through the outbox in the same transaction), so a ping meanwhile does not queue it twice and the
run is recorded on the task's state as any other. A pause is a flag on the task's state in
Datastore: every cron ping of every instance, and "run now", leave a paused task alone until it is
resumed; a run already queued or running finishes. Resumed, the task is due as its schedule says
(a task whose slot passed while it was paused runs at the next ping).
"""
from __future__ import annotations

import datetime
import logging

from core import current, db
from core.tasks.errors import NotFound
from core.tasks.periodic import kind
from core.tasks.runtime import TaskRuntime

log = logging.getLogger(__name__)

ENQUEUED, PENDING, PAUSED = "enqueued", "pending", "paused"


def _claim_now(runtime: TaskRuntime, binding: kind.PeriodicBinding, now: datetime.datetime,
               tz: datetime.tzinfo) -> str:
    key = kind.state_key(binding)
    state = db.get(key) or kind._new_state(key, binding, now)
    verdict, _slot = kind._assess(binding, state, now, tz)
    if verdict == PAUSED:
        return PAUSED  # paused by an operator: resume it first
    if verdict == "pending":
        return PENDING  # a run is queued or running already: one at a time
    generation = int(state.get("generation") or 0) + 1
    name = kind.run_task_name(binding, now, generation)
    state.update({"generation": generation, "pending_generation": generation, "pending_slot": now,
                  "pending_since": now, "pending_task": name})
    kind._describe_into(state, binding, tz, now)
    db.put(state)
    kind.send_run(runtime, binding, now, generation, name, tracked=None)
    return ENQUEUED


def _bindings(runtime: TaskRuntime) -> list[kind.PeriodicBinding]:
    return [binding for spec in runtime.registry.periodic.values() for binding in kind.bindings_of(runtime, spec)]


def _binding(runtime: TaskRuntime, name: str) -> kind.PeriodicBinding:
    found = [binding for binding in _bindings(runtime) if binding.state_id == name]
    if not found:
        raise NotFound(f"there is no periodic task {name!r}")
    return found[0]


def set_paused(runtime: TaskRuntime, name: str, paused: bool, *, by: str | None = None) -> bool:
    """Pause (or resume) the periodic task ``name``; whether that changed anything."""
    binding = _binding(runtime, name)
    now = runtime.clock.now()

    def change() -> bool:
        key = kind.state_key(binding)
        stored = db.get(key)
        if bool(stored is not None and stored.get("paused")) == paused:
            return False
        state = stored if stored is not None else kind._new_state(key, binding, now)
        state.update({"paused": paused, "paused_at": now if paused else None, "paused_by": by if paused else None})
        kind._describe_into(state, binding, kind.app_timezone(runtime), now)
        db.put(state)
        return True

    changed = bool(db.run_in_transaction(change))
    log.info("periodic task %s %s%s", name, "paused" if paused else "resumed", "" if changed else " (already so)")
    return changed


def pause(runtime: TaskRuntime, name: str, *, by: str | None = None) -> bool:
    """Stop every cron ping (and "run now") from running ``name`` until :func:`resume`."""
    return set_paused(runtime, name, True, by=by)


def resume(runtime: TaskRuntime, name: str) -> bool:
    return set_paused(runtime, name, False)


def run_now(runtime: TaskRuntime, name: str, *, now: datetime.datetime | None = None) -> str:
    """Queue the periodic task ``name`` (as the periodic page names it: ``task`` or ``task@module``)
    now: ``"enqueued"``; ``"pending"`` when a run of it is queued or running already; ``"paused"``
    when it is paused."""
    found = [_binding(runtime, name)]
    # It runs as a cron ping's run does, on behalf of nobody: not as the admin who pressed the button.
    token = current.user.set(None)
    try:
        outcome = db.run_in_transaction(_claim_now, runtime, found[0], now or runtime.clock.now(),
                                        kind.app_timezone(runtime))
    finally:
        current.user.reset(token)
    log.info("periodic task %s run now: %s", name, outcome)
    return str(outcome)


def run_group_now(runtime: TaskRuntime, cron_name: str) -> list[str]:
    """Queue every periodic task of a cron group now; returns the names queued."""
    names = [binding.state_id for binding in _bindings(runtime) if binding.spec.cron_name == cron_name]
    if not names:
        raise NotFound(f"no periodic task is declared in cron group {cron_name!r}")
    return [name for name in names if run_now(runtime, name) == ENQUEUED]
