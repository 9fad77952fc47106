"""What tracking costs: Datastore RPCs per deferred call, counted on the client, tracked and untracked."""
from __future__ import annotations

from core.tasks import callDeferred
from tests.services.datastore_rpcs import RpcCounter


@callDeferred
def plain(n: int) -> int:
    return n


@callDeferred(track=True)
def tracked(n: int) -> int:
    return n


def _measure(task_queue, rpcs: RpcCounter, func, calls: int = 5) -> tuple[float, float]:
    rpcs.take()
    for n in range(calls):
        func(n)
    enqueue = rpcs.take() / calls
    task_queue.run_pending()
    execute = rpcs.take() / calls
    return enqueue, execute


def test_untracked_calls_cost_no_datastore_rpc_and_tracked_ones_a_few(app, task_queue, capsys):
    with RpcCounter().counting() as rpcs:
        untracked_cost = _measure(task_queue, rpcs, plain)
        tracked_cost = _measure(task_queue, rpcs, tracked)
    with capsys.disabled():
        print(f"\nDatastore RPCs per deferred call (enqueue, execution): untracked {untracked_cost}, "
              f"tracked {tracked_cost}")
    assert untracked_cost == (0, 0)
    # One commit for the queued record; one conditional write to claim it (its version travels in the
    # envelope) and one to end the attempt (against the claim's version).
    enqueue, execute = tracked_cost
    assert enqueue <= 1 and execute <= 2
