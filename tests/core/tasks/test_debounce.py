"""Debounced tasks through the in-process queue, the real handler and the Datastore emulator, on the test clock."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.tasks import callDeferred
from core.tasks.debounce import DEBOUNCE_KIND, SUPERSEDED
from core.tasks.errors import ConfigurationError, DeferredArgumentError
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.records import TaskRecord
from core.testing import TaskQueue, TestClock
from tests.services.datastore_rpcs import RpcCounter

RUNS: list[tuple] = []
WINDOW = datetime.timedelta(seconds=2)


@callDeferred(debounce=WINDOW)
def rebuild_index(edit: int) -> None:
    RUNS.append(("rebuild_index", edit))


@callDeferred(debounce=WINDOW, debounce_key="doc-{doc_id}", track=True)
def rebuild_document(doc_id: int, edit: int) -> None:
    RUNS.append(("rebuild_document", doc_id, edit))


@callDeferred
def plain(edit: int) -> None:
    RUNS.append(("plain", edit))


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


@pytest.fixture
def task_queue(app):
    """The app's queue on a clock that moves only when the test advances it (the windows come out exact)."""
    return TaskQueue(app, clock=TestClock(start=datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.UTC)))


def test_thirty_calls_within_the_window_give_one_run_with_the_last_arguments(app, task_queue):
    outcomes = []
    for edit in range(30):
        rebuild_index(edit)
        outcomes += task_queue.advance(0.05)  # 30 calls in 1.5 s, each within 2 s of the one before
    assert RUNS == [], "nothing runs while calls keep coming"
    outcomes += task_queue.advance(2.5)
    assert RUNS == [("rebuild_index", 29)], "one run, after the last call, with its arguments"
    assert len(outcomes) == 30 and all(o.status == 200 for o in outcomes)
    assert sum(o.skipped == SUPERSEDED for o in outcomes) == 29, "the others were superseded, not failed"
    assert db.Query(DEAD_LETTER_KIND).run() == [] and db.Query(DEBOUNCE_KIND).run() == []


def test_calls_spaced_wider_than_the_window_each_run(app, task_queue):
    for edit in range(3):
        rebuild_index(edit)
        task_queue.advance(2.5)
    assert RUNS == [("rebuild_index", 0), ("rebuild_index", 1), ("rebuild_index", 2)]


def test_the_run_comes_a_window_after_the_last_call_not_the_first(app, task_queue):
    rebuild_index(1)
    task_queue.advance(1.5)
    rebuild_index(2)
    task_queue.advance(1.5)
    assert RUNS == [], "the window starts again at the second call"
    task_queue.advance(0.6)
    assert RUNS == [("rebuild_index", 2)]


def test_debounce_key_collapses_calls_per_key_and_superseded_records_are_not_failures(app, task_queue):
    first = rebuild_document(1, 1)
    rebuild_document(2, 1)
    last = rebuild_document(1, 2)
    task_queue.advance(3)
    assert sorted(RUNS) == [("rebuild_document", 1, 2), ("rebuild_document", 2, 1)]
    assert TaskRecord.fetch(last.id).state == "succeeded"
    superseded = TaskRecord.fetch(first.id)
    assert superseded.state == "cancelled" and superseded.attempts == 0, "never started, and ended"


def test_a_per_call_debounce_collapses_only_the_calls_that_ask_for_it(app, task_queue):
    plain(1, _debounce=1)
    plain(2, _debounce=1)
    plain(3)
    task_queue.run_pending()
    assert RUNS == [("plain", 3)], "a call without _debounce runs at once"
    task_queue.advance(1.5)
    assert RUNS == [("plain", 3), ("plain", 2)]


def test_what_debounced_calls_cost_in_datastore_rpcs(app, task_queue, capsys):
    with RpcCounter().counting() as rpcs:
        rpcs.take()
        for edit in range(4):
            rebuild_index(edit)
        by_method = dict(rpcs.calls)
        per_call = rpcs.take() / 4
        task_queue.advance(3)
        superseded_and_winner = rpcs.take()
    with capsys.disabled():
        print(f"\nDatastore RPCs of a debounced call: {per_call} per call; {superseded_and_winner} for its 4 tasks "
              f"(3 superseded, 1 run)")
    assert RUNS == [("rebuild_index", 3)]
    # A call: a transaction that only writes (begun, then the commit of its mark with its outbox
    # entry), then the outbox entry's delete. The tasks: a lookup each; the winner's cleanup is a
    # transaction (a lookup that begins it and a commit).
    assert by_method == {"begin_transaction": 4, "commit": 8}
    assert (per_call, superseded_and_winner) == (3, 4 + 2)


def undecorated(doc_id: int) -> None: ...


def test_bad_debounce_options_fail_where_they_are_written(app):
    with pytest.raises(ConfigurationError, match="debounce must be a positive"):
        callDeferred(debounce=0)(undecorated)
    with pytest.raises(ConfigurationError, match="debounce_key= needs debounce="):
        callDeferred(debounce_key="x")(undecorated)
    with pytest.raises(ConfigurationError, match="debounce_key template 'doc-{nope}' names 'nope'"):
        callDeferred(debounce=1, debounce_key="doc-{nope}")(undecorated)
    with pytest.raises(ValueError, match=r"plain\(_debounce=\.\.\.\): debounce must be a positive .* got -1"):
        plain(1, _debounce=-1)
    with pytest.raises(ValueError, match="give no _countdown or _eta"):
        rebuild_index(1, _countdown=5)
    with pytest.raises(DeferredArgumentError, match="debounce_key template 'doc-{doc_id.real}' cannot be filled"):
        callDeferred(debounce=1, debounce_key="doc-{doc_id.real}")(undecorated)("a")
