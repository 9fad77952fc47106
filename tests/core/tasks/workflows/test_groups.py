"""Groups through the in-process queue and the real handler, on the emulator."""
from __future__ import annotations

import dataclasses

import pytest

from core import db
from core.module import Module
from core.tasks import DeferredArgumentError, PermanentTaskFailure, callDeferred, message, records
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.runtime import runtime_of
from core.tasks.workflows import WorkflowFailed, group, hook, signature, store
from core.tasks.workflows import groups as group_module
from core.testing import TaskQueue

RUNS: list[tuple[str, object]] = []
REPORTS: list[tuple[object, str]] = []
FAIL: set[int] = set()


@pytest.fixture(autouse=True)
def _reset():
    RUNS.clear()
    REPORTS.clear()
    FAIL.clear()


@callDeferred(max_attempts=3)
def square(n: int) -> int:
    RUNS.append(("square", n))
    if n in FAIL:
        FAIL.discard(n)
        raise RuntimeError(f"transient failure of {n}")
    return n * n


@callDeferred
def never(n: int) -> int:
    RUNS.append(("never", n))
    if n % 2:
        raise PermanentTaskFailure(f"{n} is odd")
    return n


@callDeferred
def report(results: object, month: str) -> str:
    REPORTS.append((results, month))
    return f"report {month}"


def _drain(task_queue) -> None:
    task_queue.run_pending(raise_errors=False, max_attempts=5)


def test_members_run_and_the_callback_runs_once_with_their_results_in_order(app, task_queue):
    handle = group(square.s(n) for n in range(10)).then(report.s("2026-10")).start()
    assert handle.status().state == "running" and handle.status().total == 10
    _drain(task_queue)
    assert sorted(n for _, n in RUNS) == list(range(10))
    assert REPORTS == [([n * n for n in range(10)], "2026-10")]
    assert handle.result(timeout=5) == "report 2026-10"
    status = handle.status()
    assert (status.state, status.done, status.failed, status.total) == ("succeeded", 10, 0, 10)
    members = db.Query(records.RECORD_KIND).filter("group =", handle.id).run()
    assert len(members) == 11  # ten members and the callback, all tracked


def test_duplicate_pushes_of_every_member_send_the_callback_once(app, task_queue):
    handle = group(square.s(n) for n in range(6)).then(report.s("dup")).start()
    task_queue.run_pending(max_tasks=1)  # the spawn task
    copies = list(task_queue.pending)
    assert len(copies) == 6
    _drain(task_queue)
    assert len(REPORTS) == 1
    task_queue.transport.pending.extend(dataclasses.replace(c) for c in copies)  # every member pushed again
    _drain(task_queue)
    assert len(REPORTS) == 1 and len(RUNS) == 6  # skipped as "ended before", booked again: no effect
    status = handle.status()
    assert (status.state, status.done, status.failed) == ("succeeded", 6, 0)


def test_members_that_fail_and_are_retried_end_succeeded(app, task_queue):
    FAIL.update({1, 4})
    handle = group(square.s(n) for n in range(6)).then(report.s("retry")).start()
    _drain(task_queue)
    assert len(RUNS) == 8
    assert REPORTS == [([n * n for n in range(6)], "retry")]
    assert handle.status().done == 6


def test_dead_members_under_all_succeeded_fail_the_group_and_skip_the_callback(app, task_queue):
    handle = group(never.s(n) for n in range(4)).then(report.s("strict")).start()
    _drain(task_queue)
    assert REPORTS == []
    status = handle.status()
    assert (status.state, status.done, status.failed) == ("failed", 2, 2)
    with pytest.raises(WorkflowFailed, match="2 of 4 members failed"):
        handle.result(timeout=5)
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 2 and {letter["workflow"] for letter in letters} == {handle.id}


def test_dead_members_under_always_give_the_callback_a_summary(app, task_queue):
    handle = group(never.s(n) for n in range(4)).then(report.s("lenient"), policy="always").start()
    _drain(task_queue)
    assert len(REPORTS) == 1
    summary, month = REPORTS[0]
    assert month == "lenient"
    assert summary["total"] == 4 and summary["succeeded"] == 2 and summary["failed"] == 2
    assert summary["results"] == [0, None, 2, None]
    assert [e["index"] for e in summary["errors"]] == [1, 3] and "1 is odd" in summary["errors"][0]["error"]
    assert handle.result(timeout=5) == "report lenient"


def _member_task(task_queue, index: int):
    """The queued task of member ``index`` (its spawn task ran)."""
    for task in task_queue.pending:
        marker = message.decode(task.request.body).payload.get("workflow")
        if marker is not None and marker["role"] == "member" and marker["index"] == index:
            return task
    raise AssertionError(f"member {index} is not queued")


def test_a_crash_after_a_member_ran_but_before_its_bookkeeping_is_booked_by_the_redelivery(
        app, task_queue, monkeypatch):
    handle = group(square.s(n) for n in range(3)).then(report.s("crash")).start()
    task_queue.run_pending(max_tasks=1)  # the spawn task
    last = _member_task(task_queue, 2)
    real = hook.book

    def crash_on_last(runtime, workflow_id, role, index, task_id, *layout):
        if index == 2:
            raise SystemExit("the process died")  # not an Exception: nothing in the request catches it
        return real(runtime, workflow_id, role, index, task_id, *layout)

    monkeypatch.setattr(hook, "book", crash_on_last)
    with pytest.raises(SystemExit):
        _drain(task_queue)
    _drain(task_queue)  # what the crash interrupted
    monkeypatch.setattr(hook, "book", real)
    member_record = db.Query(records.RECORD_KIND).filter("group =", handle.id).filter(
        "target =", square.target.name).run()
    assert sorted(r["state"] for r in member_record) == ["succeeded"] * 3  # member 2 ran and ended
    assert REPORTS == [] and handle.status().done == 2  # but is not booked
    task_queue.transport.pending.append(dataclasses.replace(last, retry_count=1, execution_count=1))
    _drain(task_queue)
    assert RUNS.count(("square", 2)) == 1  # not run again: its record said succeeded
    assert REPORTS == [([0, 1, 4], "crash")]


def test_bookkeeping_that_fails_is_handed_to_a_task(app, task_queue, monkeypatch):
    handle = group(square.s(n) for n in range(2)).then(report.s("later")).start()
    real = group_module.member_ended
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise db.TransactionFailedError("contention")
        return real(*args)

    monkeypatch.setattr(group_module, "member_ended", flaky)
    _drain(task_queue)
    assert len(calls) == 3 and REPORTS == [([0, 1], "later")]
    assert handle.status().state == "succeeded"


def test_a_large_group_is_spawned_in_batches_and_sharded(app, task_queue, monkeypatch):
    monkeypatch.setattr(group_module, "SPAWN_BATCH", 15)  # three batches: a spawn tree of two levels
    total = 40
    handle = group(square.s(n) for n in range(total)).then(report.s("big")).start()
    root = db.get(store.root_key(handle.id))
    assert root["shards"] == store.shard_count(total) == 16 and root["batches"] == 3
    assert len(task_queue.pending) == 1  # the first spawn task, not the members
    task_queue.transport.pending.extend(dataclasses.replace(t) for t in list(task_queue.pending))  # pushed twice
    _drain(task_queue)
    assert sorted(n for _, n in RUNS) == list(range(total))
    assert REPORTS == [([n * n for n in range(total)], "big")]
    shards = db.Query(store.SHARD_KIND).filter("workflow =", handle.id).run()
    assert sorted(len(s["succeeded"]) for s in shards) == sorted(
        store.shard_size(s, total, 16) for s in range(16))


def test_shards_of_ten_thousand_members_stay_small():
    shards = store.shard_count(10_000)
    sizes = [store.shard_size(s, 10_000, shards) for s in range(shards)]
    assert shards == 100 and max(sizes) == store.SHARD_MEMBERS and sum(sizes) == 10_000
    assert store.shard_count(3) == 3 and store.shard_count(1000) == 16
    assert {store.shard_of(i, shards) for i in range(100)} == set(range(100))  # neighbours spread out


def test_a_group_without_callback_returns_the_members_results(app, task_queue):
    handle = group([square.s(3), square.s(4)]).start()
    _drain(task_queue)
    assert handle.result(timeout=5) == [9, 16]


class Invoices(Module):
    @callDeferred
    def total(self, amount: int) -> int:
        RUNS.append(("invoice", amount))
        return amount + 1

    @callDeferred
    def summary(self, results: list) -> None:
        REPORTS.append((results, self.module_path))


def test_members_and_callback_can_be_deferred_methods_of_a_mounted_module(make_app):
    app = make_app({"invoices": Invoices})
    task_queue = TaskQueue(app)
    live = runtime_of(app).modules.get("invoices")
    handle = group(signature(live.total, n) for n in range(3)).then(signature(live.summary)).start()
    _drain(task_queue)
    assert sorted(RUNS) == [("invoice", 0), ("invoice", 1), ("invoice", 2)]
    assert REPORTS == [([1, 2, 3], "invoices")] and handle.status().state == "succeeded"
    with pytest.raises(DeferredArgumentError, match="not mounted"):
        signature(Invoices("invoices", "elsewhere").total, 1)
