"""Datastore leases on the emulator: one holder, renewal, release, expiry of a dead holder; and the
claims kept alive by heartbeats (a periodic run's claim, a query iterator's finish)."""
from __future__ import annotations

import concurrent.futures
import datetime
import threading
import time

import pytest

from core import db
from core.tasks import lease
from core.tasks.errors import LockHeld
from core.tasks.lease import Heartbeat, Lease, current_holder, holding
from core.tasks.periodic import kind as periodic
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.periodic.kind import STATE_KIND, run_cron
from core.tasks.queryiter import QueryIter
from core.tasks.queryiter.runs import FINISHED, get_run
from core.testing import TestClock

SECONDS = datetime.timedelta(seconds=1)


@pytest.fixture
def clock(task_queue) -> TestClock:
    """The app's clock (its runtime is current for the test): leases expire as the test advances it."""
    return task_queue.clock


def test_one_holder_at_a_time_until_release(datastore):
    first, second = Lease("invoice-1", 60 * SECONDS), Lease("invoice-1", 60 * SECONDS)
    assert first.acquire() and first.expires_at is not None
    assert not second.acquire()
    assert first.acquire(), "acquiring again what one holds renews it"
    assert current_holder("invoice-1")["holder"] == first.holder
    assert Lease("invoice-2", SECONDS).acquire(), "another name is another lease"
    assert first.release() is True
    assert current_holder("invoice-1") is None
    assert second.acquire()
    assert first.release() is False, "a lease no longer ours is not released"
    assert current_holder("invoice-1")["holder"] == second.holder


def test_a_dead_holder_s_lease_expires_and_renewal_keeps_a_live_one(datastore, clock):
    live, dead, waiting = Lease("live", 10 * SECONDS), Lease("dead", 10 * SECONDS), Lease("live", 10 * SECONDS)
    assert live.acquire() and dead.acquire()
    for _ in range(3):  # 24 s in all, the live holder renewing every 8 s
        clock.advance(8)
        assert live.renew()
        assert not waiting.acquire()
    assert Lease("dead", 10 * SECONDS).acquire(), "nobody renewed it: expired"
    assert dead.renew() is False and dead.release() is False
    clock.advance(10.5)
    assert waiting.acquire(), "the live holder stopped renewing: its lease ran out too"
    assert live.renew() is False


def test_concurrent_acquirers_get_one_lease(datastore):
    leases = [Lease("contended", 60 * SECONDS) for _ in range(10)]

    def acquire(one: Lease) -> bool:
        with db.using(datastore):  # a thread starts without the test's store
            return one.acquire()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        won = list(pool.map(acquire, leases))
    assert won.count(True) == 1
    assert current_holder("contended")["holder"] == leases[won.index(True)].holder


def test_long_names_are_hashed_and_bad_leases_refused(datastore):
    name = "x" * 2000
    assert Lease(name, SECONDS).acquire()
    assert current_holder(name) is not None and lease.lease_key(name).name.startswith("sha256:")
    with pytest.raises(ValueError, match="non-empty name"):
        Lease("", SECONDS)
    with pytest.raises(ValueError, match="must be positive"):
        Lease("n", datetime.timedelta(0))


def test_holding_releases_after_the_block_also_when_it_fails(datastore):
    with holding("job", 60 * SECONDS) as held:
        assert current_holder("job")["holder"] == held.holder
        with pytest.raises(LockHeld, match="lock 'job' is held by another run until"):
            with holding("job", 60 * SECONDS):
                pass
    assert current_holder("job") is None
    with pytest.raises(RuntimeError, match="boom"):
        with holding("job", 60 * SECONDS):
            raise RuntimeError("boom")
    assert current_holder("job") is None


def test_holding_renews_while_the_block_outlives_the_lease(datastore):
    """A 1.5 s lease held through a 4 s block: never free in between, free after."""
    free_during = []
    with holding("long", 1.5 * SECONDS):
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            free_during.append(Lease("long", 60 * SECONDS).acquire())
            time.sleep(0.5)
    assert free_during and not any(free_during)
    assert current_holder("long") is None


def test_heartbeat_goes_on_after_an_error_and_stops_when_the_claim_is_lost():
    beats: list[int] = []
    done = threading.Event()

    def beat() -> bool:
        beats.append(len(beats))
        if len(beats) == 1:
            raise RuntimeError("one bad beat")
        if len(beats) == 3:
            done.set()
            return False
        return True

    heartbeat = Heartbeat(beat, 0.05, what="test").start()
    assert done.wait(10)
    heartbeat._thread.join(10)
    assert heartbeat.lost and heartbeat.beats == 2 and len(beats) == 3
    heartbeat.stop()
    with pytest.raises(ValueError):
        Heartbeat(beat, 0, what="zero")


# --- claims kept alive while the work runs ------------------------------------------------------

GATE = {"started": threading.Event(), "release": threading.Event()}
FINISHES: list[int] = []
RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _gates():
    for event in GATE.values():
        event.clear()
    FINISHES.clear()
    RUNS.clear()
    yield
    GATE["release"].set()


def _wait_in_the_work() -> None:
    GATE["started"].set()
    assert GATE["release"].wait(60), "the test never released the work"


class LongFinish(QueryIter):
    """A handleFinish that runs far longer than its finish lease (3 s)."""

    finishLease = 3 * SECONDS  # noqa: N815

    @classmethod
    def handleFinish(cls, totalCount, customData):  # noqa: N802, N803
        FINISHES.append(totalCount)
        _wait_in_the_work()


@PeriodicTask(cronName="t-long-run")
def long_periodic() -> None:
    RUNS.append("long")
    _wait_in_the_work()


def _in_background(func) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(func)
    pool.shutdown(wait=False)
    return future


def test_a_handle_finish_longer_than_its_lease_is_not_started_again(app, client, task_queue):
    db.put([db.Entity(db.key("long_thing", i)) for i in range(1, 4)])
    run_id = LongFinish.startIterOnQuery(db.Query("long_thing"))
    step = task_queue.pending[0]
    first = _in_background(lambda: task_queue.run_pending(raise_errors=False))  # sees our outcome too
    assert GATE["started"].wait(60)
    time.sleep(4.5)  # past the 3 s lease: only renewal keeps the claim
    step.execution_count = step.retry_count = 1
    again = client.post(step.request.path, data=step.request.body, headers=task_queue.transport._headers(step))
    assert again.status_code == 500 and "being finished by another execution" in again.get_data(as_text=True)
    GATE["release"].set()
    first.result(60)
    assert FINISHES == [3]
    assert get_run(run_id).status == FINISHED


def test_a_periodic_run_longer_than_its_claim_is_not_claimed_again(app, task_queue, monkeypatch):
    monkeypatch.setattr(periodic, "STALE_PENDING", 3 * SECONDS)
    runtime = app.extensions["core"]
    assert run_cron(runtime, "t-long-run").enqueued == ["tests.core.tasks.test_lease.long_periodic"]
    running = _in_background(lambda: task_queue.run_pending())
    assert GATE["started"].wait(60)
    time.sleep(4.5)  # the claim is older than STALE_PENDING: only its heartbeat keeps it
    report = run_cron(runtime, "t-long-run")
    assert report.outcomes == {"tests.core.tasks.test_lease.long_periodic": "pending"}
    state = db.get(db.key(STATE_KIND, "tests.core.tasks.test_lease.long_periodic"))
    assert state["alive_at"] > state["last_attempt"]
    GATE["release"].set()
    running.result(60)
    assert RUNS == ["long"] and task_queue.pending == []

