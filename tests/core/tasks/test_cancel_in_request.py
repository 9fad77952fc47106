"""A call cancelled in the request (or transaction) that deferred it is never sent and never runs."""
from __future__ import annotations

import pytest

from core import db
from core.module import Module, exposed
from core.tasks import callDeferred, outbox, records

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _reset():
    RUNS.clear()


@callDeferred
def chore(label: str) -> None:
    RUNS.append(label)


@callDeferred(track=True)
def tracked_chore(label: str) -> None:
    RUNS.append(label)


class Desk(Module):
    @exposed
    def defer_and_cancel(self, tracked: str = "") -> dict:
        """Defer two calls, cancel the first: the second still goes out with the batch."""
        task = tracked_chore if tracked else chore
        dropped = task("dropped")
        task("kept")
        return {"cancelled": dropped.cancel(), "again": dropped.cancel(), "id": dropped.id}

    @exposed
    def defer_and_cancel_in_transaction(self, tracked: str = "") -> dict:
        task = tracked_chore if tracked else chore

        def work() -> dict:
            db.put(db.Entity(db.key("desk", "tx")))
            dropped = task("dropped")
            task("kept")
            return {"cancelled": dropped.cancel(), "id": dropped.id}

        return db.run_in_transaction(work)


@pytest.fixture
def app(make_app):
    return make_app({"desk": Desk})


@pytest.mark.parametrize("tracked", ["", "1"])
def test_a_call_cancelled_in_its_request_never_runs(app, client, task_queue, tracked):
    answer = client.get(f"/desk/defer_and_cancel?tracked={tracked}").get_json()
    assert answer["cancelled"] is True and answer["again"] is False
    assert len(task_queue.pending) == 1
    task_queue.run_pending()
    assert RUNS == ["kept"]
    if tracked:
        assert records.get(answer["id"])["state"] == "cancelled"


@pytest.mark.parametrize("tracked", ["", "1"])
def test_a_call_cancelled_in_its_transaction_never_runs_and_leaves_no_outbox_entry(app, client, task_queue, tracked):
    answer = client.get(f"/desk/defer_and_cancel_in_transaction?tracked={tracked}").get_json()
    assert answer["cancelled"] is True
    assert outbox.outbox_size() == 0
    task_queue.run_pending()
    assert RUNS == ["kept"]
    assert db.get(db.key("desk", "tx")) is not None
    assert records.get(answer["id"]) is None, "a call withdrawn in its transaction was never queued: no record"
