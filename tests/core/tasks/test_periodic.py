"""Periodic tasks through signed cron pings, the in-process queue and the real /_tasks handler."""
from __future__ import annotations

import datetime
import threading

import pytest

from core import db
from core.module import Module
from core.tasks import callDeferred, message, records, wire
from core.tasks.auth.signing import sign_cron_ping
from core.tasks.errors import ConfigurationError, InvalidScheduleSpecification, PermanentTaskFailure
from core.tasks.outbox import OUTBOX_KIND
from core.tasks.periodic import kind as periodic
from core.tasks.periodic.declare import PeriodicTask, periodic_task, removePeriodicTask, spec_of
from core.tasks.periodic.kind import STATE_KIND, find_bound_task, periodic_overview
from core.tasks.periodic.schedule import Crontab, IntervalSchedule
from core.tasks.registry import isolated_registry
from core.tasks.runtime import get_runtime
from core.tasks.transports.base import EnqueueResult, EnqueueStatus
from core.testing import TaskQueue, TestClock

CALLS: list[object] = []
ATTEMPTS: dict[str, int] = {}
UTC = datetime.UTC


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    ATTEMPTS.clear()


@PeriodicTask(cronName="t-every")
def every_ping() -> None:
    CALLS.append("every")


@PeriodicTask(60, cronName="t-hourly")
def hourly() -> None:
    CALLS.append("hourly")


@PeriodicTask(datetime.timedelta(minutes=5), cronName="t-mixed")
def healthy() -> None:
    CALLS.append("healthy")


@PeriodicTask(datetime.timedelta(minutes=5), cronName="t-five")
def every_five_minutes() -> None:
    CALLS.append("five")


@PeriodicTask(0, cronName="t-mixed")
def broken() -> None:
    CALLS.append("broken")
    raise RuntimeError("database on fire")


@PeriodicTask(cronName="t-flaky")
def flaky() -> None:
    ATTEMPTS["flaky"] = ATTEMPTS.get("flaky", 0) + 1
    CALLS.append(("flaky", ATTEMPTS["flaky"]))
    if ATTEMPTS["flaky"] <= 2:
        raise RuntimeError("transient")


@PeriodicTask(cronName="t-permanent")
def gives_up() -> None:
    CALLS.append("gives_up")
    raise PermanentTaskFailure("never works")


@PeriodicTask(at=datetime.time(3, 0), cronName="t-daily")
def nightly() -> None:
    CALLS.append("nightly")


@PeriodicTask(crontab=Crontab(hour=None, minute=(0, 30)), cronName="t-daily")
def half_hourly() -> None:
    CALLS.append("half_hourly")


@periodic_task(cron_name="t-slow", interval=30, queue="background")
def slow_snake_case() -> None:
    CALLS.append("slow")


@PeriodicTask
def bare_decorated() -> None:
    CALLS.append("bare")


class Reports(Module):
    @PeriodicTask(10, cronName="t-modules")
    def rebuild(self) -> None:
        CALLS.append(("rebuild", self.module_path))


class SpecialReports(Reports):
    def rebuild(self) -> None:  # an override without the decorator: not periodic any more
        CALLS.append(("override", self.module_path))


def plain_function() -> None:
    CALLS.append("plain")


@callDeferred
def left_behind(value: str) -> None:
    CALLS.append(("left", value))


@pytest.fixture
def app(make_app):
    return make_app({"reports": Reports, "archive": Reports, "special": SpecialReports})


def ping(client, settings, group: str, headers: dict | None = None):
    path = f"/_tasks/cron/{group}"
    return client.get(path, headers=sign_cron_ping(settings.tasks_secret, path) if headers is None else headers)


def state(state_id: str) -> db.Entity | None:
    return db.get(db.key(STATE_KIND, state_id))


def name_of(func) -> str:
    return spec_of(func).name


START = datetime.datetime(2026, 5, 4, 14, 0, tzinfo=UTC)


@pytest.fixture
def clock(app) -> TestClock:
    """The app's clock, standing at 14:00 UTC on 4 May 2026 until the test advances it."""
    return TaskQueue(app, clock=TestClock(start=START)).clock


# --- pings enqueue, the queue runs -----------------------------------------------------------------

def test_signed_ping_only_enqueues_and_the_queue_runs_it(app, client, settings, task_queue):
    response = ping(client, settings, "t-every")
    assert response.status_code == 200
    assert response.get_json() == {"group": "t-every", "tasks": {name_of(every_ping): "enqueued"}}
    assert CALLS == [] and len(task_queue.pending) == 1
    request = task_queue.pending[0].request
    assert request.path == "/_tasks/deferred" and request.name.endswith("-periodic")
    task_queue.run_pending()
    assert CALLS == ["every"]
    recorded = state(name_of(every_ping))
    assert recorded["runs"] == 1 and recorded["last_success"] is not None
    assert recorded["pending_generation"] is None and recorded["cron"] == "t-every"
    # A periodic run is tracked: it has a task record that ended succeeded.
    (record,) = db.Query(records.RECORD_KIND).run()
    assert record["state"] == "succeeded" and record["target"] == periodic.RUN_TARGET.name


def test_zero_interval_runs_on_every_ping_but_never_twice_at_once(app, client, settings, task_queue):
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "enqueued"
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "pending"
    assert len(task_queue.pending) == 1
    task_queue.run_pending()
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "enqueued"
    task_queue.run_pending()
    assert CALLS == ["every", "every"]


@pytest.mark.parametrize("headers", [
    {},
    sign_cron_ping("another-secret", "/_tasks/cron/t-every"),
    sign_cron_ping("test-task-secret", "/_tasks/cron/t-hourly"),        # signed for another group
    sign_cron_ping("test-task-secret", "/_tasks/cron/t-every", timestamp=1),  # a replayed old ping
    {"X-Appengine-Cron": "true"},                                          # not on App Engine
    {"X-Tasks-Signature": "garbage"},
])
def test_forged_pings_run_nothing(app, client, settings, task_queue, headers):
    response = ping(client, settings, "t-every", headers=headers)
    assert response.status_code in (400, 403)
    assert "error" in response.get_json()
    assert task_queue.pending == [] and CALLS == []
    assert state(name_of(every_ping)) is None


def test_unknown_group_is_a_clear_404(app, client, settings, task_queue):
    response = ping(client, settings, "no-such-group")
    assert response.status_code == 404
    assert "no-such-group" in response.get_json()["error"]
    assert task_queue.pending == []


def test_interval_task_runs_once_however_many_pings_arrive_inside_its_interval(app, client, settings, task_queue,
                                                                               clock):
    ping(client, settings, "t-hourly")
    task_queue.run_pending()
    for _ in range(5):
        clock.advance(10 * 60)
        assert ping(client, settings, "t-hourly").get_json()["tasks"][name_of(hourly)] == "not due"
    assert task_queue.pending == []
    clock.advance(10 * 60)   # 60 minutes after the first run's ping
    assert ping(client, settings, "t-hourly").get_json()["tasks"][name_of(hourly)] == "enqueued"
    task_queue.run_pending()
    assert CALLS == ["hourly", "hourly"]


def test_a_five_minute_task_falls_due_through_advance_and_not_before(app, task_queue):
    task_queue.ping_cron("t-five")
    assert CALLS == ["five"]
    task_queue.advance(240)
    task_queue.ping_cron("t-five")
    assert CALLS == ["five"], "four minutes after its run it is not due"
    task_queue.advance(120)
    task_queue.ping_cron("t-five")
    assert CALLS == ["five", "five"], "six minutes after its run it is due"


def test_twenty_concurrent_pings_enqueue_one_run(app, settings, task_queue):
    results: list[int] = []
    verdicts: list[str] = []
    barrier = threading.Barrier(20)

    def one_ping() -> None:
        client = app.test_client()
        barrier.wait()
        response = ping(client, settings, "t-hourly")
        results.append(response.status_code)
        verdicts.append(response.get_json()["tasks"][name_of(hourly)])

    threads = [threading.Thread(target=one_ping) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 20
    assert verdicts.count("enqueued") == 1, verdicts
    assert set(verdicts) <= {"enqueued", "pending", "contended"}
    assert len(task_queue.pending) == 1
    task_queue.run_pending()
    assert CALLS == ["hourly"]
    assert state(name_of(hourly))["generation"] == 1


def test_failing_task_is_retried_and_does_not_stop_the_others(app, client, settings, task_queue):
    outcome = ping(client, settings, "t-mixed").get_json()["tasks"]
    assert outcome == {name_of(healthy): "enqueued", name_of(broken): "enqueued"}
    outcomes = task_queue.run_pending(max_attempts=3, raise_errors=False)
    assert CALLS.count("healthy") == 1 and CALLS.count("broken") == 3
    assert sorted(o.status for o in outcomes) == [200, 500, 500, 500]
    failed = state(name_of(broken))
    assert "database on fire" in failed["last_error"] and failed["last_error_at"] is not None
    assert failed["pending_generation"] == 1 and failed["attempts"] == 3 and failed["failures"] == 3
    assert failed["last_success"] is None
    # While the queue still retries it, pings do not pile up more runs of the broken task.
    assert ping(client, settings, "t-mixed").get_json()["tasks"] == {name_of(healthy): "not due",
                                                                       name_of(broken): "pending"}


def test_last_run_is_recorded_when_the_run_succeeds(app, client, settings, task_queue):
    ping(client, settings, "t-flaky")
    task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert CALLS == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    recorded = state(name_of(flaky))
    assert recorded["runs"] == 1 and recorded["failures"] == 2 and recorded["last_success"] is not None
    assert recorded["last_outcome"] == "success" and recorded["pending_generation"] is None
    assert "transient" in recorded["last_error"]


def test_permanent_failure_frees_the_task_for_the_next_ping(app, client, settings, task_queue):
    ping(client, settings, "t-permanent")
    first_name = task_queue.pending[0].request.name
    task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert CALLS == ["gives_up"]
    recorded = state(name_of(gives_up))
    assert recorded["pending_generation"] is None and "never works" in recorded["last_error"]
    assert ping(client, settings, "t-permanent").get_json()["tasks"][name_of(gives_up)] == "enqueued"
    assert task_queue.pending[0].request.name != first_name


def test_duplicate_delivery_of_a_finished_run_does_nothing(app, client, settings, task_queue):
    ping(client, settings, "t-every")
    queued = task_queue.pending[0]
    task_queue.run_pending()
    task_queue.pending.append(queued)   # the queue delivers the same task again
    task_queue.run_pending()
    assert CALLS == ["every"]


def test_lost_pending_run_is_claimed_again_and_the_lost_one_is_superseded(app, client, settings, task_queue, clock):
    ping(client, settings, "t-every")
    lost = task_queue.pending.pop(0)      # the queue loses it
    clock.advance(3600)
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "pending"
    clock.advance(2 * 3600)
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "enqueued"
    task_queue.pending.append(lost)       # ... and finds it again
    task_queue.run_pending()
    assert CALLS == ["every"]
    assert state(name_of(every_ping))["generation"] == 2


def test_missed_runs_are_made_up_by_one_run(app, client, settings, task_queue, clock):
    ping(client, settings, "t-hourly")
    task_queue.run_pending()
    clock.advance(3 * 86400)
    ping(client, settings, "t-hourly")
    ping(client, settings, "t-hourly")
    task_queue.run_pending()
    assert CALLS == ["hourly", "hourly"]


def test_daily_and_crontab_tasks_follow_the_calendar(app, client, settings, task_queue, clock):
    tasks = ping(client, settings, "t-daily").get_json()["tasks"]   # 14:00, first sight: nothing due
    assert tasks == {name_of(nightly): "not due", name_of(half_hourly): "not due"}
    clock.advance(31 * 60)                                            # 14:31: the 14:30 slot passed
    assert ping(client, settings, "t-daily").get_json()["tasks"][name_of(half_hourly)] == "enqueued"
    task_queue.run_pending()
    clock.advance(13 * 3600 + 5 * 60)                                 # 03:36 next day: both passed
    tasks = ping(client, settings, "t-daily").get_json()["tasks"]
    assert tasks == {name_of(nightly): "enqueued", name_of(half_hourly): "enqueued"}
    task_queue.run_pending()
    assert sorted(CALLS) == ["half_hourly", "half_hourly", "nightly"]
    assert state(name_of(nightly))["last_success"] == datetime.datetime(2026, 5, 5, 3, 0, tzinfo=UTC)
    assert state(name_of(half_hourly))["last_success"] == datetime.datetime(2026, 5, 5, 3, 30, tzinfo=UTC)
    clock.advance(10 * 60)
    assert ping(client, settings, "t-daily").get_json()["tasks"] == {name_of(nightly): "not due",
                                                                       name_of(half_hourly): "not due"}


def test_calendar_tasks_use_the_app_time_zone(make_app, settings):
    app = make_app({}, settings=settings.replace(tasks_timezone="Europe/Berlin"))
    TaskQueue(app, clock=TestClock(start=START))
    rows = {r["task"]: r for r in periodic_overview(get_runtime())}
    assert rows[name_of(nightly)]["schedule"] == "daily at 03:00 (Europe/Berlin)"
    # 14:00 UTC on 4 May is 16:00 CEST; 03:00 CEST the next morning is 01:00 UTC.
    assert rows[name_of(nightly)]["next_due"] == datetime.datetime(2026, 5, 5, 1, 0, tzinfo=UTC)
    assert app is not None


def test_a_module_mounted_twice_runs_on_each_instance(app, client, settings, task_queue):
    tasks = ping(client, settings, "t-modules").get_json()["tasks"]
    base = name_of(Reports.rebuild)
    assert tasks == {f"{base}@reports": "enqueued", f"{base}@archive": "enqueued"}
    task_queue.run_pending()
    assert sorted(CALLS) == [("rebuild", "archive"), ("rebuild", "reports")]
    assert state(f"{base}@reports")["runs"] == 1 and state(f"{base}@archive")["runs"] == 1


def test_find_bound_task_uses_the_module_tree(app):
    modules = app.extensions["core"].modules
    bound, instance = find_bound_task(Reports.rebuild)
    assert instance is modules["reports"] and bound.__self__ is instance
    bound, instance = find_bound_task(Reports.rebuild, modules["archive"])
    assert instance is modules["archive"]
    assert find_bound_task(Reports.rebuild, modules["special"]) is None   # overridden there
    assert find_bound_task(every_ping) == (every_ping.periodic.func, None)
    assert find_bound_task(plain_function) is None
    handler = modules["_tasks"]
    assert handler.findBoundTask(Reports.rebuild)[1] is modules["reports"]


def test_decorated_functions_stay_callable(app):
    every_ping()
    app.extensions["core"].modules["reports"].rebuild()
    bare_decorated()
    assert CALLS == ["every", ("rebuild", "reports"), "bare"]
    assert spec_of(bare_decorated).cron_name == "default"
    assert spec_of(slow_snake_case).schedule == IntervalSchedule(datetime.timedelta(minutes=30))


def test_runs_go_to_the_queue_the_task_names(app, client, settings, task_queue):
    ping(client, settings, "t-slow")
    assert [t.request.queue for t in task_queue.pending] == ["background"]
    task_queue.run_pending()
    assert CALLS == ["slow"]


def test_periodic_overview_for_the_admin_pages(app, client, settings, task_queue):
    ping(client, settings, "t-mixed")
    task_queue.run_pending(max_attempts=1, raise_errors=False)
    rows = {(r["task"], r["instance"]): r for r in periodic_overview(get_runtime())}
    ok, bad = rows[(name_of(healthy), None)], rows[(name_of(broken), None)]
    assert ok["cron"] == "t-mixed" and ok["schedule"] == "at most every 5 min" and ok["registered"]
    assert ok["last_success"] is not None and ok["next_due"] == ok["last_success"] + datetime.timedelta(minutes=5)
    assert bad["last_error"].startswith("RuntimeError: database on fire") and bad["pending"]
    assert bad["schedule"] == "every cron ping"
    base = name_of(Reports.rebuild)
    assert (base, "reports") in rows and (base, "archive") in rows and (base, "special") not in rows
    assert rows[(base, "archive")]["name"] == f"{base}@archive" and ok["name"] == name_of(healthy)
    assert (name_of(nightly), None) in rows and rows[(name_of(nightly), None)]["last_success"] is None


def test_states_of_tasks_no_longer_declared_are_shown_as_unregistered(app):
    orphan = db.Entity(db.key(STATE_KIND, "gone.module.task"))
    orphan.update({"task": "gone.module.task", "cron": "old", "pending_generation": None})
    db.put(orphan)
    rows = [r for r in periodic_overview(get_runtime()) if r["task"] == "gone.module.task"]
    assert len(rows) == 1 and rows[0]["registered"] is False


def test_the_outbox_sweep_is_built_into_the_default_group(app, client, settings, task_queue):
    transport = task_queue.transport
    original = transport.enqueue_many
    transport.enqueue_many = lambda requests: [EnqueueResult(EnqueueStatus.FAILED, error=OSError("down"))
                                               for _ in requests]
    with app.test_request_context():
        left_behind("left behind")
    transport.enqueue_many = original
    (left,) = db.Query(OUTBOX_KIND).run()
    left["created"] = datetime.datetime.now(UTC) - datetime.timedelta(minutes=5)
    db.put(left)
    tasks = ping(client, settings, "default").get_json()["tasks"]
    assert tasks[periodic.SWEEP_OUTBOX.periodic.name] == "enqueued"
    task_queue.run_pending()
    assert db.Query(OUTBOX_KIND).run() == []
    assert ("left", "left behind") in CALLS and "bare" in CALLS


def test_claims_made_while_the_queue_is_down_wait_in_the_outbox(app, client, settings, task_queue):
    transport = task_queue.transport
    original = transport.enqueue_many
    transport.enqueue_many = lambda requests: [EnqueueResult(EnqueueStatus.FAILED, error=OSError("down"))
                                               for _ in requests]
    assert ping(client, settings, "t-every").status_code == 200
    assert task_queue.pending == [] and len(db.Query(OUTBOX_KIND).run()) == 1
    assert ping(client, settings, "t-every").get_json()["tasks"][name_of(every_ping)] == "pending"
    transport.enqueue_many = original
    from core.tasks.outbox import sweep_outbox

    assert sweep_outbox(get_runtime(), older_than=datetime.timedelta(0)) == 1
    task_queue.run_pending()
    assert CALLS == ["every"]


# --- declaration ---------------------------------------------------------------------------------------

def test_remove_periodic_task():
    with isolated_registry() as registry:
        wrapped = PeriodicTask(5, cronName="t-remove")(plain_function)
        assert name_of(wrapped) in registry.periodic
        removePeriodicTask(wrapped)
        assert name_of_in(registry, plain_function) is None
        PeriodicTask(5, cronName="t-remove")(plain_function)
        removePeriodicTask(plain_function)          # by the undecorated function
        assert len(registry.periodic) == 0
        PeriodicTask(5, cronName="t-remove")(plain_function)
        removePeriodicTask(f"{__name__}.plain_function")  # by registered name
        assert len(registry.periodic) == 0
        removePeriodicTask(plain_function)          # unknown: no-op


def name_of_in(registry, func):
    return spec_of(func, registry)


def test_declaration_errors():
    def _private() -> None:
        pass

    def needs_argument(value) -> None:
        pass

    with isolated_registry():
        with pytest.raises(ConfigurationError, match="underscore"):
            PeriodicTask(5)(_private)
        with pytest.raises(InvalidScheduleSpecification, match="exactly one"):
            PeriodicTask(5, at=datetime.time(3))(plain_function)
        with pytest.raises(InvalidScheduleSpecification):
            PeriodicTask(crontab=Crontab(hour=25))
        with pytest.raises(InvalidScheduleSpecification, match="number of minutes"):
            PeriodicTask("hourly")(plain_function)
        with pytest.raises(ConfigurationError, match="cron group"):
            PeriodicTask(5, cronName="bad/name")(plain_function)
        with pytest.raises(ConfigurationError, match="queue"):
            PeriodicTask(5, queue="bad queue")(plain_function)
        needs_argument.__qualname__ = "needs_argument"
        with pytest.raises(TypeError, match="no arguments"):
            PeriodicTask(5)(needs_argument)
        with pytest.raises(TypeError):
            PeriodicTask(5)(staticmethod(plain_function))


def test_a_run_queued_by_an_earlier_version_as_a_deferred_call_still_runs(app, client, settings, task_queue):
    """Runs queued before periodic runs were a kind of their own are still in queues at a deploy."""
    assert ping(client, settings, "t-every").status_code == 200
    queued = message.decode(task_queue.pending.pop().request.body)
    payload = queued.payload
    earlier = message.Envelope("deferred", {"target": "core.tasks.periodic.run_periodic", "args": [
        payload["periodic"], payload["instance"], payload["slot"], payload["generation"]], "kwargs": {}}, queued.queue)
    with app.app_context():
        request = wire.build_request(get_runtime(), earlier, "/_tasks/deferred")
    response = client.post(request.path, data=request.body, headers=request.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert CALLS == ["every"]
    assert state(name_of(every_ping))["runs"] == 1
