"""What tracking costs: Datastore RPCs per deferred call, counted on the client, tracked and untracked."""
from __future__ import annotations

import collections

import pytest

from core import db
from core.tasks import callDeferred

METHODS = ("lookup", "commit", "begin_transaction", "rollback", "run_query", "run_aggregation_query",
           "allocate_ids", "reserve_ids")


@callDeferred
def plain(n: int) -> int:
    return n


@callDeferred(track=True)
def tracked(n: int) -> int:
    return n


class RpcCounter:
    """Counts the calls the Datastore client makes to the server, by method."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        api = db.get_datastore().client._datastore_api
        for name in METHODS:
            original = getattr(api, name)
            monkeypatch.setattr(api, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(*args, **kwargs):
            self.calls[name] += 1
            return original(*args, **kwargs)
        return call

    def take(self) -> int:
        total = sum(self.calls.values())
        self.calls.clear()
        return total


def _measure(task_queue, rpcs: RpcCounter, func, calls: int = 5) -> tuple[float, float]:
    rpcs.take()
    for n in range(calls):
        func(n)
    enqueue = rpcs.take() / calls
    task_queue.run_pending()
    execute = rpcs.take() / calls
    return enqueue, execute


def test_untracked_calls_cost_no_datastore_rpc_and_tracked_ones_a_few(app, task_queue, monkeypatch, capsys):
    rpcs = RpcCounter(monkeypatch)
    untracked_cost = _measure(task_queue, rpcs, plain)
    tracked_cost = _measure(task_queue, rpcs, tracked)
    with capsys.disabled():
        print(f"\nDatastore RPCs per deferred call (enqueue, execution): untracked {untracked_cost}, "
              f"tracked {tracked_cost}")
    assert untracked_cost == (0, 0)
    # One commit for the queued record; a transaction (begin, lookup, commit) to start, one to end.
    assert tracked_cost == (1, 6)
