"""Periodic tasks: the cron ping that enqueues due runs, the run, and the built-in ones.

Declaring them (``@PeriodicTask``) is :mod:`core.tasks.periodic.declare`; its public names are
imported here, where they are documented. A cron ping (``GET /_tasks/cron/<group>`` from App
Engine cron, Cloud Scheduler or the local pinger) only *enqueues*: each due task of the group
becomes its own task of the ``periodic`` kind, so a slow or failing task neither blocks nor hides
another and every run gets the queue's retries, records and dead letters. The runs are pushed to
``/_tasks/deferred`` like every signed task of the app. The ping itself runs through the app's
task pipeline as a task of kind ``cron`` (:func:`run_ping`): hooks and outcome listeners see it,
and a crash is its outcome.

Bookkeeping lives in one Datastore entity per task and live instance (kind
``_tasks_periodic_state``, so a module mounted twice has two). A ping claims a due run inside a
transaction on that entity, marking it *pending* and writing the run's task to the outbox in
the same commit; concurrent pings collide on the entity and only one claims. The run records its
slot as the last run only when it succeeds; a failed run stays pending while the queue retries it.
The queued task is also named after task, instance, slot and claim number (hashed), so even two
claims that somehow raced could not create it twice.
"""
from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
from collections.abc import Callable
from typing import Any

from core import db
from core.reprs import safe_repr
from core.tasks import aio, deadletters, deadline, locks, message, outbox, records
from core.tasks.deferred import DEFERRED_PATH, DeferredTarget, send_task
from core.tasks.errors import (
    ConfigurationError,
    LockHeld,
    NotFound,
    PayloadError,
    PermanentTaskFailure,
    TaskNotFound,
    error_text,
)
from core.tasks.outcome import Outcome
from core.tasks.periodic.declare import DEFAULT_CRON, PeriodicFunction, PeriodicSpec, declare_periodic, spec_of
from core.tasks.periodic.schedule import (
    CalendarSchedule,
    IntervalSchedule,
    Schedule,
    describe,
    due_slot,
    named_zone,
    next_due,
)
from core.tasks.pipeline import CRON_KIND
from core.tasks.registry import TaskRegistry, declare_builtin, declare_kind
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.transports.base import hashed_task_name

log = logging.getLogger(__name__)

STATE_KIND = "_tasks_periodic_state"
#: A pending run with no sign of life (claim, attempt or heartbeat) for this long is taken as lost
#: (the queue gave up on it) and claimed again; the lost one, should it still arrive, finds itself
#: superseded. A run that is running renews its claim a few times per this period.
STALE_PENDING = datetime.timedelta(hours=2)


# --- live instances ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PeriodicBinding:
    """One periodic task on one live instance (or the function itself): the unit that runs."""

    spec: PeriodicSpec
    instance_path: str | None = None
    instance: Any = None

    @property
    def state_id(self) -> str:
        return self.spec.name if self.instance_path is None else f"{self.spec.name}@{self.instance_path}"

    def call(self) -> Any:
        if self.spec.is_method:
            return self.spec.func(self.instance)
        return self.spec.func()


def _resolves(instance: object, spec: PeriodicSpec) -> bool:
    """Does ``instance``'s class still use this periodic method (not an override of it)?"""
    attribute = inspect.getattr_static(type(instance), spec.attr, None)
    return isinstance(attribute, PeriodicFunction) and attribute.periodic.name == spec.name


def bindings_of(runtime: TaskRuntime, spec: PeriodicSpec) -> list[PeriodicBinding]:
    """Where ``spec`` runs: once for a function, once per mounted instance for a method."""
    if not spec.is_method:
        return [PeriodicBinding(spec)]
    if spec.owner is None or runtime.modules is None:
        return []
    found = []
    for instance in runtime.modules.instances_of(spec.owner):
        path = runtime.modules.path_of(instance)
        if path is not None and _resolves(instance, spec):
            found.append(PeriodicBinding(spec, path, instance))
    return found


def _binding_at(runtime: TaskRuntime, spec: PeriodicSpec, instance_path: str | None) -> PeriodicBinding:
    if not spec.is_method:
        return PeriodicBinding(spec)
    instance = runtime.modules.get(instance_path) if runtime.modules is not None and instance_path else None
    if instance is None or spec.owner is None or not isinstance(instance, spec.owner) or not _resolves(instance, spec):
        raise TaskNotFound(f"no module mounted at {instance_path!r} runs periodic task {spec.name}")
    return PeriodicBinding(spec, instance_path, instance)


def find_bound_task(task: Any, obj: Any = None, depth: int = 0) -> tuple[Callable[..., Any], Any] | None:
    """ViUR's ``TaskHandler.findBoundTask``: ``(callable, instance)`` for a periodic task, or ``None``.

    A method is looked up among the mounted instances of its class through the module tree (the
    first one; :func:`bindings_of` gives them all); with ``obj`` only that instance is considered.
    A function comes back as ``(function, None)``. ``depth`` is accepted for compatibility.
    """
    runtime = get_runtime()
    spec = spec_of(task, runtime.registry)
    if spec is None:
        return None
    if not spec.is_method:
        return spec.func, None
    for binding in bindings_of(runtime, spec):
        if obj is None or binding.instance is obj:
            return spec.func.__get__(binding.instance, type(binding.instance)), binding.instance
    return None


# --- state entities ----------------------------------------------------------------------------------

def state_key(binding: PeriodicBinding) -> db.Key:
    return db.key(STATE_KIND, binding.state_id)


def app_timezone(runtime: TaskRuntime) -> datetime.tzinfo:
    """``settings.tasks_timezone`` as a zone (calendar schedules are read in it)."""
    try:
        return named_zone(runtime.settings.tasks_timezone)
    except ConfigurationError as exc:
        raise ConfigurationError(f"TASKS_TIMEZONE: {exc}") from None


def _new_state(key: db.Key, binding: PeriodicBinding, now: datetime.datetime) -> db.Entity:
    entity = db.Entity(key, exclude_from_indexes=("last_error", "schedule"))
    entity.update({"task": binding.spec.name, "instance": binding.instance_path, "cron": binding.spec.cron_name,
                   "since": now, "generation": 0, "runs": 0, "failures": 0, "last_success": None,
                   "pending_generation": None, "pending_slot": None, "pending_since": None, "pending_task": None})
    return entity


def _baseline(schedule: Schedule, state: db.Entity) -> datetime.datetime | None:
    """The last run's slot; a calendar task that never ran counts from when it was first seen."""
    last = state.get("last_success")
    if last is not None or isinstance(schedule, IntervalSchedule):
        return last  # type: ignore[no-any-return]
    return state.get("since")  # type: ignore[no-any-return]


def _assess(binding: PeriodicBinding, state: db.Entity, now: datetime.datetime,
            tz: datetime.tzinfo) -> tuple[str, datetime.datetime | None]:
    """``("paused", None)``, ``("pending", None)``, ``("due", slot)`` or ``("not due", None)`` for a task's state."""
    if state.get("paused"):
        return "paused", None  # paused at run time (:func:`core.tasks.periodic.controls.pause`): no ping runs it
    if state.get("pending_generation") is not None:
        signs = [t for t in (state.get("pending_since"), state.get("last_attempt"), state.get("alive_at"))
                 if t is not None]
        if signs and now - max(signs) < STALE_PENDING:
            return "pending", None
        log.warning("periodic task %s: the pending run %s looks lost; claiming a new one",
                    binding.state_id, state.get("pending_task"))
    slot = due_slot(binding.spec.schedule, _baseline(binding.spec.schedule, state), now, tz)
    return ("due", slot) if slot is not None else ("not due", None)


def run_task_name(binding: PeriodicBinding, slot: datetime.datetime, generation: int) -> str:
    """The queue's name for one run: hashed (Cloud Tasks spreads hashed names best), unique per claim."""
    return hashed_task_name(f"{binding.state_id}\n{slot.isoformat()}\n{generation}", "-periodic")


def _describe_into(state: db.Entity, binding: PeriodicBinding, tz: datetime.tzinfo,
                   now: datetime.datetime) -> None:
    schedule = binding.spec.schedule
    state["cron"] = binding.spec.cron_name
    state["schedule"] = describe(schedule, tz if isinstance(schedule, CalendarSchedule) else None)
    state["next_due"] = next_due(schedule, _baseline(schedule, state), now, tz)


def _clear_pending(state: db.Entity) -> None:
    state.update({"pending_generation": None, "pending_slot": None, "pending_since": None, "pending_task": None})


# --- the cron ping -----------------------------------------------------------------------------------

@dataclasses.dataclass
class CronReport:
    """What one ping did, per task and instance: enqueued, pending, not due, paused, contended or error."""

    group: str
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def enqueued(self) -> list[str]:
        return [name for name, outcome in self.outcomes.items() if outcome == "enqueued"]

    @property
    def errors(self) -> list[str]:
        return [name for name, outcome in self.outcomes.items() if outcome == "error"]

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "tasks": dict(self.outcomes)}


def _claim(runtime: TaskRuntime, binding: PeriodicBinding, now: datetime.datetime, tz: datetime.tzinfo) -> str:
    """In a transaction: enqueue the run if the task is due and none is pending."""
    key = state_key(binding)
    state = db.get(key)
    created = state is None
    if state is None:
        state = _new_state(key, binding, now)
    verdict, slot = _assess(binding, state, now, tz)
    if verdict == "due" and slot is not None:
        generation = int(state.get("generation") or 0) + 1
        name = run_task_name(binding, slot, generation)
        state.update({"generation": generation, "pending_generation": generation, "pending_slot": slot,
                      "pending_since": now, "pending_task": name})
        _describe_into(state, binding, tz, now)
        db.put(state)
        # Inside the transaction this lands in the outbox: it is queued if and only if the claim commits.
        send_run(runtime, binding, slot, generation, name, tracked=binding.spec.name not in _UNTRACKED)
        return "enqueued"
    if created:
        _describe_into(state, binding, tz, now)
        db.put(state)
    return verdict


def run_cron(runtime: TaskRuntime, cron_name: str, *, now: datetime.datetime | None = None) -> CronReport:
    """Enqueue every due periodic task of a cron group (the request was verified already).

    Raises :class:`NotFound` for a group no task declares. Each task is claimed on its own: one
    that cannot be claimed is reported and does not stop the others.
    """
    specs = [spec for spec in runtime.registry.periodic.values() if spec.cron_name == cron_name]
    if not specs:
        raise NotFound(f"no periodic task is declared in cron group {cron_name!r}")
    now = now or runtime.clock.now()
    tz = app_timezone(runtime)
    bindings = [binding for spec in specs for binding in bindings_of(runtime, spec)]
    states = db.get([state_key(b) for b in bindings]) if bindings else []
    report = CronReport(cron_name)
    for binding, state in zip(bindings, states):
        try:
            verdict = "due" if state is None else _assess(binding, state, now, tz)[0]
            if verdict == "due":  # only a hint read outside the transaction; the claim decides
                verdict = db.run_in_transaction(_claim, runtime, binding, now, tz)
        except db.TransactionFailedError:
            verdict = "contended"  # concurrent pings: another one committed its claim
        except Exception:
            log.exception("cron %s: could not claim periodic task %s", cron_name, binding.state_id)
            verdict = "error"
        report.outcomes[binding.state_id] = verdict
    if report.enqueued:
        log.info("cron %s enqueued %s", cron_name, ", ".join(report.enqueued))
    return report


def run_ping(runtime: TaskRuntime, envelope: message.Envelope, info: object) -> Outcome:
    """The runner of a cron ping (kind ``cron``, verified by the pipeline): its report is its answer.

    A task that could not be claimed makes the answer a 500 (the scheduler may ping again); an
    unknown group is a 404.
    """
    group = envelope.payload["group"]
    report = run_cron(runtime, group)
    status = 500 if report.errors else 200
    text = f"cron {group}: {len(report.enqueued)} enqueued, {len(report.errors)} errors"
    return Outcome(status, text, data=report.to_json())


declare_kind(CRON_KIND, run_ping)


# --- the run -----------------------------------------------------------------------------------------

def _begin(key: db.Key, generation: int, started: datetime.datetime) -> bool:
    """In a transaction: may this claim run? Records the attempt; a superseded claim may not."""
    state = db.get(key)
    if state is None:
        return True  # the state was wiped; run and record afresh
    if state.get("pending_generation") != generation:
        return False
    state["last_attempt"] = started
    state["attempts"] = int(state.get("attempts") or 0) + 1
    db.put(state)
    return True


def _record_success(binding: PeriodicBinding, key: db.Key, generation: int, slot: datetime.datetime,
                    started: datetime.datetime, finished: datetime.datetime, tz: datetime.tzinfo) -> None:
    state = db.get(key) or _new_state(key, binding, started)
    if state.get("pending_generation") == generation:
        _clear_pending(state)
    last = state.get("last_success")
    if last is None or slot > last:
        state["last_success"] = slot
    state.update({"last_run_started": started, "last_run_finished": finished,
                  "runs": int(state.get("runs") or 0) + 1, "last_outcome": "success"})
    _describe_into(state, binding, tz, finished)
    db.put(state)


def _record_failure(key: db.Key, generation: int, error: str, at: datetime.datetime, permanent: bool) -> None:
    state = db.get(key)
    if state is None:
        return
    state.update({"last_error": error, "last_error_at": at, "failures": int(state.get("failures") or 0) + 1,
                  "last_outcome": "failed"})
    if permanent and state.get("pending_generation") == generation:
        _clear_pending(state)  # the queue will not retry: let the next ping claim a new run
    db.put(state)


def send_run(runtime: TaskRuntime, binding: PeriodicBinding, slot: datetime.datetime, generation: int,
             name: str, *, tracked: bool | None) -> None:
    """Queue one claimed run as a task of the ``periodic`` kind (in a transaction: if it commits).

    ``tracked=None``: a record if the run's queue is a tracked one.
    """
    # ``description`` names the task in its record, whose target is the ``periodic`` kind.
    payload = {"periodic": binding.spec.name, "instance": binding.instance_path, "slot": slot,
               "generation": generation, "description": binding.spec.name}
    if binding.spec.queue is not None:
        runtime.queues.require(binding.spec.queue, f"periodic task {binding.spec.name} (declared with queue=...)")
    send_task(runtime, RUN_TARGET.name, payload, target=RUN_TARGET.name, queue=binding.spec.queue, name=name,
              tracked=tracked)


def run_periodic(runtime: TaskRuntime, envelope: message.Envelope, info: Any) -> None:
    """Run one claimed periodic run (the ``periodic`` task a cron ping enqueued)."""
    payload = envelope.payload
    task, instance = payload.get("periodic"), payload.get("instance")
    slot, generation = payload.get("slot"), payload.get("generation")
    if not isinstance(task, str):
        raise TaskNotFound(f"a periodic run names no periodic task but {safe_repr(task)}")
    if instance is not None and not isinstance(instance, str):
        raise PayloadError(f"a periodic run of {task} has an instance path {safe_repr(instance)}")
    if not isinstance(slot, datetime.datetime) or slot.tzinfo is None or type(generation) is not int:
        raise PayloadError(f"a periodic run of {task} lacks its slot or claim number")
    spec: PeriodicSpec = runtime.registry.periodic.get(task)
    binding = _binding_at(runtime, spec, instance)
    key = state_key(binding)
    started = runtime.clock.now()
    if not db.run_in_transaction(_begin, key, generation, started):
        log.info("periodic task %s: run %d was superseded or already done; skipping", binding.state_id, generation)
        return
    try:
        with locks.periodic_run(runtime, binding.state_id, key, generation, lock=binding.spec.lock,
                                stale_after=STALE_PENDING):
            aio.call(binding.call)
    except LockHeld:
        raise
    except Exception as exc:
        text = error_text(exc)
        try:
            db.run_in_transaction(_record_failure, key, generation, text, runtime.clock.now(),
                                  isinstance(exc, PermanentTaskFailure))
        except Exception:
            log.exception("periodic task %s: could not record its failure", binding.state_id)
        raise
    db.run_in_transaction(_record_success, binding, key, generation, slot, started, runtime.clock.now(),
                          app_timezone(runtime))


#: The kind of every periodic run's task (also what its task record names as target).
RUN_TARGET = declare_kind("periodic", run_periodic, DEFERRED_PATH)


def _run_as_queued_before(task: str, instance: str | None, slot: datetime.datetime, generation: int) -> None:
    """A periodic run that an earlier version queued as a deferred call: run it as the kind does."""
    payload = {"periodic": task, "instance": instance, "slot": slot, "generation": generation}
    run_periodic(get_runtime(), message.Envelope("periodic", payload, ""), None)


#: The name earlier versions queued periodic runs under; runs still queued at a deploy keep running.
EARLIER_RUN_TARGET = "core.tasks.periodic.run_periodic"
declare_builtin("deferred", EARLIER_RUN_TARGET, DeferredTarget(EARLIER_RUN_TARGET, _run_as_queued_before, "function"))



# --- built in ----------------------------------------------------------------------------------------

def sweep_outbox_task() -> None:
    """Built in, on every ``default`` ping: queue outbox entries a crashed process or a failing queue left behind.

    What still cannot be queued a day after it was written becomes a dead letter.
    """
    swept = outbox.sweep(get_runtime(), give_up=deadletters.record_unsent)
    if swept.sent or swept.retried_later or swept.given_up:
        log.warning("outbox sweep: %d task(s) sent, %d kept for a later try, %d given up as dead letters",
                    swept.sent, swept.retried_later, swept.given_up)


def purge_task_records_task() -> None:
    """Built in, hourly on the ``default`` group: delete task records past their ``result_ttl``."""
    removed = records.purge_expired()
    if removed:
        log.info("removed %d expired task record(s)", removed)
    deadline.purge_expired()  # the run claims of tasks with timeout= kept past their day


#: The built-ins keep the names they had when this room was ``core.tasks.periodic``: their state in
#: Datastore is stored under these names.
SWEEP_OUTBOX = declare_periodic(sweep_outbox_task, 0, DEFAULT_CRON, None, None, None, builtin=True,
                                name="core.tasks.periodic.sweep_outbox_task")
PURGE_RECORDS = declare_periodic(purge_task_records_task, datetime.timedelta(hours=1), DEFAULT_CRON, None, None, None,
                                 builtin=True, name="core.tasks.periodic.purge_task_records_task")
_BUILTIN_SPEC: PeriodicSpec = SWEEP_OUTBOX.periodic
_BUILTIN_SPECS: tuple[PeriodicSpec, ...] = (_BUILTIN_SPEC, PURGE_RECORDS.periodic)
#: Built-in runs are frequent housekeeping: they get no task record.
_UNTRACKED = frozenset(spec.name for spec in _BUILTIN_SPECS)


def install_builtins(registry: TaskRegistry) -> None:
    """Give a registry made by hand the built-ins an app's registry gets when the app is made."""
    registry.install_builtins()


# --- for the admin pages -----------------------------------------------------------------------------

_OVERVIEW_FIELDS = ("last_success", "last_run_started", "last_run_finished", "last_error", "last_error_at",
                    "pending_since", "pending_task", "runs", "failures", "last_outcome", "paused", "paused_at")


def periodic_overview(runtime: TaskRuntime, *, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """One row per periodic task and instance, for the admin dashboard.

    Keys: ``name`` (the task, plus ``@instance`` for a method), ``task``, ``instance``, ``cron``,
    ``schedule``, ``next_due``, ``pending`` and the recorded ``last_success`` (slot of the last
    successful run), ``last_run_started``, ``last_run_finished``, ``last_error``,
    ``last_error_at``, ``pending_since``, ``pending_task``, ``runs``, ``failures``,
    ``last_outcome``; ``every_ping`` for tasks that run on every ping; ``registered`` is False
    for states of tasks no longer declared.
    """
    now = now or runtime.clock.now()
    tz = app_timezone(runtime)
    states = {entity.key.name: entity for entity in db.Query(STATE_KIND).iter()}
    rows = []
    for spec in runtime.registry.periodic.values():
        for binding in bindings_of(runtime, spec):
            state = states.pop(binding.state_id, None) or _new_state(state_key(binding), binding, now)
            schedule = spec.schedule
            row: dict[str, Any] = {
                "name": binding.state_id, "task": spec.name, "instance": binding.instance_path,
                "cron": spec.cron_name,
                "schedule": describe(schedule, tz if isinstance(schedule, CalendarSchedule) else None),
                "next_due": next_due(schedule, _baseline(schedule, state), now, tz),
                "pending": state.get("pending_generation") is not None, "registered": True,
                "every_ping": isinstance(schedule, IntervalSchedule) and not schedule.every,
            }
            row.update({field: state.get(field) for field in _OVERVIEW_FIELDS})
            rows.append(row)
    for name, state in states.items():
        row = {"name": name, "task": state.get("task") or name, "instance": state.get("instance"),
               "cron": state.get("cron"), "schedule": state.get("schedule"), "next_due": None,
               "pending": state.get("pending_generation") is not None, "registered": False}
        row.update({field: state.get(field) for field in _OVERVIEW_FIELDS})
        rows.append(row)
    rows.sort(key=lambda r: (str(r["cron"]), str(r["task"]), str(r["instance"] or "")))
    return rows
