"""Periodic tasks: ``@PeriodicTask`` registration, the cron ping that enqueues due runs, and the run.

A cron ping (``GET /_tasks/cron/<group>`` from App Engine cron, Cloud Scheduler or the local
pinger) only *enqueues*: each due task of the group becomes its own deferred call of
:func:`run_periodic`, so a slow or failing task neither blocks nor hides another and every run gets
the queue's retries. The runs go through the existing ``/_tasks/deferred`` route as calls of one
internal deferred target, which keeps the task handler unchanged and reuses the executor's
verification, retries and dead letters.

Bookkeeping lives in one Datastore entity per task and live instance (kind
``_tasks_periodic_state``, so a module mounted twice has two). A ping claims a due run inside a
transaction on that entity, marking it *pending* and writing the deferred call to the outbox in
the same commit; concurrent pings collide on the entity and only one claims. The run records its
slot as the last run only when it succeeds; a failed run stays pending while the queue retries it.
The queued task is also named after task, instance, slot and claim number (hashed), so even two
claims that somehow raced could not create it twice.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from core import db
from core.tasks import aio, dispatch, locks, records
from core.tasks.deferred import DeferredTarget, defer
from core.tasks.errors import (
    ConfigurationError,
    LockHeld,
    NotFound,
    PermanentTaskFailure,
    RequestError,
    TaskNotFound,
)
from core.tasks.registry import TaskRegistry, active_registry, qualified_name
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.schedule import (
    CalendarSchedule,
    Crontab,
    IntervalSchedule,
    Schedule,
    build_schedule,
    describe,
    due_slot,
    named_zone,
    next_due,
)
from core.tasks.transports.base import QUEUE_NAME_RE

log = logging.getLogger(__name__)

STATE_KIND = "_tasks_periodic_state"
DEFAULT_CRON = "default"
#: A pending run with no sign of life (claim, attempt or heartbeat) for this long is taken as lost
#: (the queue gave up on it) and claimed again; the lost one, should it still arrive, finds itself
#: superseded. A run that is running renews its claim a few times per this period.
STALE_PENDING = datetime.timedelta(hours=2)
CRON_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_ERROR_TEXT_LIMIT = 1500


def now_utc() -> datetime.datetime:
    """The clock of the scheduler (tests replace it)."""
    return datetime.datetime.now(datetime.UTC)


# --- declaration -------------------------------------------------------------------------------------

@dataclasses.dataclass
class PeriodicSpec:
    """One declared periodic task: what to call, when, in which cron group."""

    name: str
    func: Callable[..., Any]
    schedule: Schedule
    cron_name: str
    is_method: bool
    attr: str
    owner: type | None = None
    queue: str | None = None
    #: Hold a lock while running (a singleton across instances and overlapping claims).
    lock: bool = False


class PeriodicFunction:
    """What ``@PeriodicTask`` returns: the function, still callable, carrying its :class:`PeriodicSpec`.

    A descriptor, so that a decorated method binds like a method and learns its class.
    """

    def __init__(self, func: Callable[..., Any], spec: PeriodicSpec) -> None:
        self.periodic = spec
        functools.update_wrapper(self, func)

    def __set_name__(self, owner: type, name: str) -> None:
        self.periodic.owner, self.periodic.attr = owner, name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return self.periodic.func.__get__(instance, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.periodic.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<periodic {self.periodic.name} ({self.periodic.cron_name})>"


def check_no_arguments(func: Callable[..., Any], is_method: bool, what: str) -> None:
    """Refuse a task function that needs arguments: nobody could pass them."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    required = [p for p in signature.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(required) > (1 if is_method else 0):
        raise TypeError(f"{what} {qualified_name(func)} must take no arguments"
                        f"{' besides self' if is_method else ''}; it takes {[p.name for p in required]}")


def _declare(func: Callable[..., Any], interval: float | datetime.timedelta | None, cron_name: str,
             at: datetime.time | None, crontab: Crontab | None, queue: str | None,
             lock: bool = False) -> PeriodicFunction:
    if isinstance(func, (staticmethod, classmethod)) or not callable(func):
        raise TypeError(f"@PeriodicTask needs a function or a module method, got {func!r}")
    if func.__name__.startswith("_"):
        raise ConfigurationError(f"periodic task {func.__qualname__} starts with an underscore: periodic tasks "
                                 "must be public functions or methods (rename it)")
    if not isinstance(cron_name, str) or not CRON_NAME_RE.match(cron_name):
        raise ConfigurationError(f"cron group name {cron_name!r} must be 1-100 letters, digits, '_' or '-'")
    if queue is not None and not QUEUE_NAME_RE.match(str(queue)):
        raise ConfigurationError(f"invalid queue name {queue!r}: use letters, digits and hyphens")
    schedule = build_schedule(interval, at, crontab)
    is_method = "." in func.__qualname__
    check_no_arguments(func, is_method, "periodic task")
    aio.check_runnable(func, "periodic task")
    if not isinstance(lock, bool):
        raise ConfigurationError(f"periodic task {func.__qualname__}: lock must be True or False, got {lock!r}")
    spec = PeriodicSpec(qualified_name(func), func, schedule, cron_name, is_method, func.__name__, queue=queue,
                        lock=lock)
    wrapper = PeriodicFunction(func, spec)
    active_registry().periodic.add(spec.name, spec)
    return wrapper


def PeriodicTask(interval: Any = None, cronName: str = DEFAULT_CRON, *,  # noqa: N802,N803 - ViUR's names
                 at: datetime.time | None = None, crontab: Crontab | None = None,
                 queue: str | None = None, lock: bool = False) -> Any:
    """Decorator: run a function, or a method on every mounted instance of its module, periodically.

    ``interval`` is a lower bound between runs: a :class:`datetime.timedelta` or a number of
    minutes (ViUR's unit); ``None``/``0`` means on every ping of the cron group. Instead of an
    interval give ``at=datetime.time(3, 0)`` (daily, in ``settings.tasks_timezone`` unless the time
    has its own ``tzinfo``) or ``crontab=Crontab(...)``. ``cronName`` is the group pinged at
    ``/_tasks/cron/<cronName>``; ``queue`` the queue the runs go to (default queue otherwise).
    ``lock=True`` holds a lock per task and instance while it runs: a run that finds it held is
    retried later by the queue, never run alongside.
    A bad specification raises :class:`InvalidScheduleSpecification` here, at decoration.
    """
    if callable(interval) and not isinstance(interval, datetime.timedelta):
        return _declare(interval, None, cronName, at, crontab, queue, lock)  # bare @PeriodicTask
    return lambda func: _declare(func, interval, cronName, at, crontab, queue, lock)


def periodic_task(interval: Any = None, cron_name: str = DEFAULT_CRON, *, at: datetime.time | None = None,
                  crontab: Crontab | None = None, queue: str | None = None, lock: bool = False) -> Any:
    """snake_case spelling of :func:`PeriodicTask`."""
    return PeriodicTask(interval, cron_name, at=at, crontab=crontab, queue=queue, lock=lock)


def spec_of(task: Any, registry: TaskRegistry | None = None) -> PeriodicSpec | None:
    """The registered spec of a decorated function, method, bound method or registered name."""
    registry = registry if registry is not None else active_registry()
    if isinstance(task, PeriodicFunction):
        found = registry.periodic.find(task.periodic.name)
        return found if found is task.periodic else None
    if isinstance(task, str):
        return registry.periodic.find(task)  # type: ignore[no-any-return]
    func = getattr(task, "__func__", task)
    try:
        name = qualified_name(func)
    except TypeError:
        return None
    found = registry.periodic.find(name)
    return found if found is not None and found.func is func else None


def removePeriodicTask(task: Any) -> None:  # noqa: N802 - ViUR's name
    """Unregister a periodic task (e.g. one inherited from a module you override); unknown is a no-op."""
    spec = spec_of(task)
    if spec is not None:
        active_registry().periodic.remove(spec.name)


remove_periodic_task = removePeriodicTask


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
    install_builtins(runtime.registry)
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
    """``("pending", None)``, ``("due", slot)`` or ``("not due", None)`` for a task's state."""
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
    material = f"{binding.state_id}\n{slot.isoformat()}\n{generation}".encode()
    return f"{hashlib.sha256(material).hexdigest()[:32]}-periodic"


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
    """What one ping did, per task and instance: enqueued, pending, not due, contended or error."""

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
        defer(runtime, RUN_TARGET, (binding.spec.name, binding.instance_path, slot, generation), {},
              _name=name, _queue=binding.spec.queue, _track=binding.spec.name not in _UNTRACKED)
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
    install_builtins(runtime.registry)
    specs = [spec for spec in runtime.registry.periodic.values() if spec.cron_name == cron_name]
    if not specs:
        raise NotFound(f"no periodic task is declared in cron group {cron_name!r}")
    now = now or now_utc()
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


def cron_request(runtime: TaskRuntime, *, cron_name: str, method: str, path: str, headers: Any, body: bytes,
                 now: datetime.datetime | None = None) -> tuple[int, dict[str, Any]]:
    """Verify a cron ping and run it: ``(status, JSON body)``; unverifiable pings run nothing."""
    try:
        runtime.verifier.verify_cron(method, path, headers, body)
    except RequestError as exc:
        log.warning("refused cron request to %s: %s", path, exc)
        return exc.http_status, {"error": str(exc)}
    except Exception:
        log.exception("cron request verification crashed")
        return 400, {"error": "unverifiable cron request"}
    try:
        report = run_cron(runtime, cron_name, now=now)
    except NotFound as exc:
        return exc.http_status, {"error": str(exc)}
    return (500 if report.errors else 200), report.to_json()


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


def run_periodic(task: str, instance: str | None, slot: datetime.datetime, generation: int) -> None:
    """Run one claimed periodic run (the deferred call a cron ping enqueued)."""
    runtime = get_runtime()
    spec: PeriodicSpec = runtime.registry.periodic.get(task)
    binding = _binding_at(runtime, spec, instance)
    key = state_key(binding)
    started = now_utc()
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
        text = f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_LIMIT]
        try:
            db.run_in_transaction(_record_failure, key, generation, text, now_utc(),
                                  isinstance(exc, PermanentTaskFailure))
        except Exception:
            log.exception("periodic task %s: could not record its failure", binding.state_id)
        raise
    db.run_in_transaction(_record_success, binding, key, generation, slot, started, now_utc(),
                          app_timezone(runtime))


RUN_TARGET = DeferredTarget(qualified_name(run_periodic), run_periodic, "function")



# --- built in ----------------------------------------------------------------------------------------

def sweep_outbox_task() -> None:
    """Built in, on every ``default`` ping: queue outbox entries a crashed process left behind."""
    swept = dispatch.sweep_outbox(get_runtime())
    if swept:
        log.warning("swept %d task(s) left in the outbox", swept)


def purge_task_records_task() -> None:
    """Built in, hourly on the ``default`` group: delete task records past their ``result_ttl``."""
    removed = records.purge_expired()
    if removed:
        log.info("removed %d expired task record(s)", removed)


SWEEP_OUTBOX = PeriodicTask(0, DEFAULT_CRON)(sweep_outbox_task)
PURGE_RECORDS = PeriodicTask(datetime.timedelta(hours=1), DEFAULT_CRON)(purge_task_records_task)
_BUILTIN_SPEC: PeriodicSpec = SWEEP_OUTBOX.periodic
_BUILTIN_SPECS: tuple[PeriodicSpec, ...] = (_BUILTIN_SPEC, PURGE_RECORDS.periodic)
#: Built-in runs are frequent housekeeping: they get no task record.
_UNTRACKED = frozenset(spec.name for spec in _BUILTIN_SPECS)


def install_builtins(registry: TaskRegistry) -> None:
    """Make sure ``registry`` knows the run target and the built-in tasks (the active one does from import)."""
    if RUN_TARGET.name not in registry.deferred:
        registry.deferred.add(RUN_TARGET.name, RUN_TARGET)
    for spec in _BUILTIN_SPECS:
        if spec.name not in registry.periodic:
            registry.periodic.add(spec.name, spec)


active_registry().deferred.add(RUN_TARGET.name, RUN_TARGET)


# --- for the admin pages -----------------------------------------------------------------------------

_OVERVIEW_FIELDS = ("last_success", "last_run_started", "last_run_finished", "last_error", "last_error_at",
                    "pending_since", "pending_task", "runs", "failures", "last_outcome")


def periodic_overview(runtime: TaskRuntime, *, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """One row per periodic task and instance, for the admin dashboard.

    Keys: ``name`` (the task, plus ``@instance`` for a method), ``task``, ``instance``, ``cron``,
    ``schedule``, ``next_due``, ``pending`` and the recorded ``last_success`` (slot of the last
    successful run), ``last_run_started``, ``last_run_finished``, ``last_error``,
    ``last_error_at``, ``pending_since``, ``pending_task``, ``runs``, ``failures``,
    ``last_outcome``; ``every_ping`` for tasks that run on every ping; ``registered`` is False
    for states of tasks no longer declared.
    """
    install_builtins(runtime.registry)
    now = now or now_utc()
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
