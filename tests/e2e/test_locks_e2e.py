"""Locked tasks end to end: gunicorn serving the app, the durable local queue pushing over HTTP, the
Datastore emulator holding the lease and each run's start and end times.

gunicorn serves :func:`probe_app`: the example app plus one locked task that records a ``lock_run``
entity per execution (started when it begins, ended when it ends), so the test can check from
outside that no two runs over one lock overlapped and that every deferred call ran.
"""
from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks import callDeferred
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.hooks import TaskHook
from core.tasks.lease import lease_key
from core.testing import on_every_server
from tests.e2e.conftest import wait_for

PROBE_APP = f"{__name__}:probe_app()"
RUN_KIND = "lock_run"
#: Short enough for the test to wait for a dead holder's lease, long against heartbeats under load.
LEASE_SECONDS = 5

#: Retries come back within a second, so ten contenders drain quickly.
QUEUE_YAML = """\
queue:
- name: default
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 50
  retry_parameters:
    min_backoff_seconds: 0.1
    max_backoff_seconds: 1
    max_doublings: 3
"""


# --- the probe app (runs inside gunicorn) ------------------------------------------------------

def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@callDeferred(lock="invoice-{invoice}", lock_lease=LEASE_SECONDS)
def locked_work(invoice: str, token: str, index: int, seconds: float, victim: bool = False) -> None:
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "index": index, "pid": os.getpid(), "started": _now(), "ended": None})
    db.put(run)
    if victim and db.get(db.key("lock_victim", token)) is None:
        marker = db.Entity(db.key("lock_victim", token))
        marker["pid"] = os.getpid()
        db.put(marker)
        time.sleep(60)  # until the test kills this worker
    time.sleep(seconds)
    run["ended"] = _now()
    db.put(run)


@callDeferred(lock="ledger-{ledger}", retry_on=(OSError,), max_attempts=2)
def picky_locked_work(ledger: str, token: str, index: int, seconds: float) -> None:
    """Retries only ``OSError``, twice at most: waiting for its lock must use up neither."""
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "index": index, "pid": os.getpid(), "started": _now(), "ended": None})
    db.put(run)
    time.sleep(seconds)
    run["ended"] = _now()
    db.put(run)


class HeldCounter(TaskHook):
    """Records every answer 'lock held' (409), the queue's cue to try again later."""

    def after_run(self, task: Any, outcome: Any) -> None:
        if outcome.status == 409:
            answer = db.Entity(db.key("lock_held", uuid.uuid4().hex))
            answer.update({"token": task.args[1], "index": task.args[2], "status": outcome.status})
            db.put(answer)


class LockProbes(Module):
    @exposed(methods=("POST",))
    def start(self, invoice: str, token: str, count: str = "1", first: str = "0", seconds: str = "0.2",
              victim: str = "", picky: str = "") -> str:
        for index in range(int(first), int(first) + int(count)):
            if picky:
                picky_locked_work(invoice, token, index, float(seconds))
            else:
                locked_work(invoice, token, index, float(seconds), victim=bool(victim))
        return "queued"


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probes."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "lockprobe": LockProbes}, users=SessionUsers(), languages=("en", "de"),
                      hooks=[HeldCounter()])


# --- utilities -----------------------------------------------------------------------------------

def _stack(make_stack, tmp_path, queue_yaml_text: str = QUEUE_YAML):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text(queue_yaml_text)
    return make_stack(app_module=PROBE_APP, queue_yaml=queue_yaml)


def _start(stack, **params: Any) -> None:
    response = requests.post(f"{stack.url}/lockprobe/start", data={k: str(v) for k, v in params.items()}, timeout=30)
    assert response.status_code == 200, response.text


def _runs(token: str) -> list[db.Entity]:
    return sorted(db.Query(RUN_KIND).filter("token =", token).run(), key=lambda r: r["started"])


def _assert_never_two_at_once(runs: list[db.Entity]) -> None:
    for before, after in zip(runs, runs[1:]):
        assert before["ended"] is not None and before["ended"] <= after["started"], (
            f"run {after['index']} started at {after['started']} while run {before['index']} "
            f"ran until {before['ended']}")


def _held_answers(token: str) -> list[db.Entity]:
    """The 409 answers given to calls with ``token`` (recorded by the app's hook)."""
    return db.Query("lock_held").filter("token =", token).run()


# --- the tests -------------------------------------------------------------------------------------

@on_every_server
def test_ten_concurrent_runs_over_one_lock_never_overlap_and_all_run(make_stack, tmp_path):
    stack = _stack(make_stack, tmp_path)
    token = uuid.uuid4().hex
    _start(stack, invoice="inv-1", token=token, count=10, seconds=0.3)
    _start(stack, invoice="inv-2", token=token + "-other", count=1, seconds=0.3)

    def all_ended() -> bool:
        runs = _runs(token)
        return len(runs) == 10 and all(r["ended"] is not None for r in runs)

    wait_for(all_ended, timeout=180, message="all ten locked runs")
    runs = _runs(token)
    assert sorted(r["index"] for r in runs) == list(range(10)), "each call ran once"
    _assert_never_two_at_once(runs)
    assert len(_runs(token + "-other")) == 1, "another invoice's lock is another lock"
    assert _held_answers(token), "runs that found the lock held were answered 409 and retried"
    wait_for(lambda: db.get(lease_key("invoice-inv-1")) is None, timeout=30, message="the lock released")


@on_every_server
def test_a_holder_killed_mid_run_releases_the_lock_after_its_lease(make_stack, tmp_path):
    stack = _stack(make_stack, tmp_path)
    token = uuid.uuid4().hex
    _start(stack, invoice="inv-9", token=token, count=1, first=0, seconds=0.1, victim=1)
    victim = wait_for(lambda: db.get(db.key("lock_victim", token)), timeout=60, message="the victim to start")
    _start(stack, invoice="inv-9", token=token, count=1, first=1, seconds=0.1)
    wait_for(lambda: _held_answers(token), timeout=60, message="the second run to find the lock held")

    held = db.get(lease_key("invoice-inv-9"))
    assert held is not None
    assert [r["index"] for r in _runs(token)] == [0], "the second call waits while the holder lives"
    os.kill(victim["pid"], signal.SIGKILL)
    assert held["expires_at"] > _now(), "the lease was live when its holder died"

    def finished() -> list[db.Entity]:
        runs = [r for r in _runs(token) if r["ended"] is not None]
        return runs if sorted(r["index"] for r in runs) == [0, 1] else []

    done = wait_for(finished, timeout=180, message="both calls to run after the holder died")
    runs = _runs(token)
    killed = [r for r in runs if r["ended"] is None]
    assert [r["index"] for r in killed] == [0] and killed[0]["pid"] == victim["pid"]
    first_after = min(r["started"] for r in done)
    assert first_after >= held["expires_at"], "nobody ran before the dead holder's lease expired"
    _assert_never_two_at_once(done)


#: Cloud Tasks' own retry defaults: the queue's backoff doubles up to an hour.
DEFAULT_RETRY_QUEUE_YAML = """\
queue:
- name: default
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 50
  retry_parameters:
    min_backoff_seconds: 0.1
    max_backoff_seconds: 3600
    max_doublings: 16
"""


def test_twenty_waiters_with_one_second_bodies_all_run_and_waits_are_no_failures(make_stack, tmp_path):
    stack = _stack(make_stack, tmp_path, DEFAULT_RETRY_QUEUE_YAML)
    token, picky = uuid.uuid4().hex, uuid.uuid4().hex
    started = time.monotonic()
    _start(stack, invoice="inv-20", token=token, count=20, seconds=1)
    _start(stack, invoice="ledger-3", token=picky, count=3, seconds=1, picky=1)

    def all_ended(of: str, count: int) -> bool:
        runs = _runs(of)
        return len(runs) == count and all(r["ended"] is not None for r in runs)

    wait_for(lambda: all_ended(token, 20), timeout=240, message="all twenty locked runs")
    print(f"20 contenders with 1 s bodies all ran in {time.monotonic() - started:.1f} s")
    runs = _runs(token)
    assert sorted(r["index"] for r in runs) == list(range(20)), "each call ran once"
    _assert_never_two_at_once(runs)
    wait_for(lambda: all_ended(picky, 3), timeout=60, message="the three contenders that retry only OSError")
    assert sorted(r["index"] for r in _runs(picky)) == [0, 1, 2]
    _assert_never_two_at_once(_runs(picky))
    assert db.Query(DEAD_LETTER_KIND).run() == [], "a lock wait is never a dead letter"
