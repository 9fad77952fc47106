"""Unique tasks (``unique=``, ``unique_for=``, ``unique_key=``, ``_unique``) on the emulator, the in-process
queue and the real handler: one pending or running task per key, freed when it ends."""
from __future__ import annotations

import datetime
import json
import threading

import pytest

from core import db
from core.tasks import PermanentTaskFailure, callDeferred
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.errors import ConfigurationError, DeferredArgumentError
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.records import CANCELLED, EXPIRED, FAILED, RETRYING, SUCCEEDED
from core.tasks.unique import CLAIM_KIND

RUNS: list[tuple] = []
FAILING: set[int] = set()


@callDeferred(unique=True)
def reindex(invoice: int, full: bool = False) -> int:
    RUNS.append(("reindex", invoice, full))
    if invoice in FAILING:
        raise PermanentTaskFailure(f"invoice {invoice} is gone")
    return invoice


@callDeferred(unique=True)
def flaky(invoice: int) -> None:
    RUNS.append(("flaky", invoice))
    raise RuntimeError("down")


@callDeferred(unique_for=datetime.timedelta(minutes=5), unique_key=lambda customer, note: customer)
def report(customer: str, note: str) -> None:
    RUNS.append(("report", customer, note))


@callDeferred(unique=True, expires=60)
def notify(user: int) -> None:
    RUNS.append(("notify", user))


@callDeferred
def plain(n: int) -> None:
    RUNS.append(("plain", n))


def undecorated(n: int) -> None:
    """Decorated only in a test, with options it refuses."""


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()
    FAILING.clear()


def claims() -> list[db.Entity]:
    return db.Query(CLAIM_KIND).run()


def test_a_second_call_with_the_same_arguments_returns_the_first_tasks_handle(app, task_queue):
    first = reindex(5)
    again = reindex(invoice=5, full=False)        # the same arguments, bound to the signature
    other = reindex(6)
    assert again.id == first.id and again.tracked and again.queue == first.queue
    assert other.id != first.id and reindex(5, full=True).id not in (first.id, other.id)
    assert len(task_queue.pending) == 3
    assert again.status().state.value == "queued"
    task_queue.run_pending()
    assert sorted(RUNS) == [("reindex", 5, False), ("reindex", 5, True), ("reindex", 6, False)]
    assert again.result(timeout=1) == 5


def test_success_frees_the_key(app, task_queue):
    first = reindex(5)
    task_queue.run_pending()
    assert first.status().state is SUCCEEDED and claims() == [], "the run side deletes the claim"
    second = reindex(5)
    assert second.id != first.id and len(task_queue.pending) == 1


def test_a_permanent_failure_frees_the_key(app, task_queue):
    FAILING.add(5)
    first = reindex(5)
    task_queue.run_pending(raise_errors=False)
    assert first.status().state is FAILED and claims() == []
    assert reindex(5).id != first.id


def test_a_task_that_will_be_retried_keeps_its_key(app, task_queue):
    first = flaky(1)
    task_queue.run_pending(raise_errors=False)
    assert first.status().state is RETRYING
    assert flaky(1).id == first.id and len(claims()) == 1


def test_cancel_frees_the_key(app, task_queue):
    first = reindex(5)
    assert first.cancel()
    assert first.status().state is CANCELLED
    second = reindex(5)
    assert second.id != first.id
    task_queue.run_pending()
    assert RUNS == [("reindex", 5, False)] and claims() == []


def test_expiry_frees_the_key(app, task_queue):
    first = notify(1)
    task_queue.clock.advance(61)
    task_queue.run_pending()
    assert RUNS == [] and first.status().state is EXPIRED and claims() == []
    assert notify(1).id != first.id


def test_unique_for_frees_a_key_whose_task_never_ended(app, task_queue):
    first = report("acme", "monthly", _countdown=3600)
    assert report("acme", "a different note, the same key").id == first.id
    assert report("globex", "monthly").id != first.id
    task_queue.clock.advance(5 * 60)
    assert report("acme", "after five minutes").id != first.id


def test_the_call_can_turn_uniqueness_off_or_name_the_key(app, task_queue):
    assert reindex(5, _unique=False).id != reindex(5, _unique=False).id
    keyed = plain(1, _unique="nightly")
    assert plain(2, _unique="nightly").id == keyed.id and keyed.tracked
    with pytest.raises(ValueError, match="always tracked"):
        reindex(7, _track=False)
    with pytest.raises(ValueError, match="_unique must be"):
        reindex(7, _unique=3)


def test_an_argument_that_cannot_travel_is_named_at_the_call(app, task_queue):
    with pytest.raises(DeferredArgumentError, match=r"reindex\(args\[0\]\).*object"):
        reindex(object())
    assert task_queue.pending == [] and claims() == []


def test_bad_options_fail_at_decoration():
    with pytest.raises(ConfigurationError, match="undecorated: unique_for must be"):
        callDeferred(unique_for=-5)(undecorated)
    with pytest.raises(ConfigurationError, match="unique_key= needs unique=True"):
        callDeferred(unique_key=lambda n: n)(undecorated)
    with pytest.raises(ConfigurationError, match="unique_key must be a callable"):
        callDeferred(unique=True, unique_key="n")(undecorated)


def test_fifty_concurrent_callers_over_five_keys_queue_exactly_five_tasks(app, task_queue):
    start = threading.Barrier(50)
    handles: list[str] = []
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        with app.app_context():
            try:
                start.wait(30)
                handles.append(reindex(n % 5).id)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(handles) == 50
    assert len(set(handles)) == 5 and len(task_queue.pending) == 5
    task_queue.run_pending()
    assert sorted(RUNS) == [("reindex", n, False) for n in range(5)]


@pytest.mark.parametrize("claim", [5, "not-a-claim", ["x"]])
def test_a_well_signed_task_with_a_malformed_claim_is_a_dead_letter(client, claim):
    body = json.dumps({"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0,
                       "payload": {"target": reindex.target.name, "args": [1], "kwargs": {}, "track": True,
                                   "unique": claim}})
    path = "/_tasks/deferred"
    response = client.post(path, data=body, headers={
        SIGNATURE_HEADER: sign_request("test-task-secret", "POST", path, body.encode())})
    assert response.status_code == 200 and RUNS == []
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["error"].startswith("PayloadError") and "'unique'" in letter["error"]
