"""Sharded QueryIter runs against the Datastore emulator: the key-range split, the refusal of queries
that cannot be split, and handleFinish once over all shards through duplicate pushes, flaky
entries, crashed bookkeeping, stops and resumes."""
from __future__ import annotations

import datetime
import itertools
import json

import pytest

from core import db
from core.db import query as db_query
from core.tasks import DeferredArgumentError
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.queryiter import chunk, split
from core.tasks.queryiter.runs import (
    FINISHED,
    QUERY_ITER_PATH,
    RUN_KIND,
    RUNNING,
    SHARD_DONE,
    SHARD_KIND,
    STOPPED,
    get_run,
    list_runs,
    resume_run,
    step_task_name,
    stop_run,
)
from core.tasks.transports.inline import InlineTransport
from tests.core.tasks.test_queryiter import (
    FAIL_IDS,
    FAILURES,
    SEEN,
    FlakyOnce,
    Recorder,
    StopsOnce,
    WholeQuery,
    _spy,
    entries,
    finishes,
    post_again,
    put_things,
)


@pytest.fixture(autouse=True)
def _reset():
    SEEN.clear()
    FAIL_IDS.clear()
    FAILURES.clear()


def in_ranges(query: db.Query, points: list[db.Key]) -> list[list[int]]:
    """The ids each range between ``points`` holds, read through the ranged queries."""
    return [sorted(e.key.id for e in split.in_range(query, lo, hi).keys_only().iter())
            for lo, hi in split.key_ranges(points)]


# --- the split ----------------------------------------------------------------------------------

def test_key_order_is_the_order_datastore_sorts_keys_in(app):
    parent_a, parent_b = db.key("Alpha", 7), db.key("Beta", "x")
    keys = [db.key("k", 3), db.key("k", 10), db.key("k", 2 ** 40), db.key("k", "a"), db.key("k", "b"),
            db.key("k", "ab"), db.key("k", 1, parent=parent_a), db.key("k", "z", parent=parent_a),
            db.key("k", 5, parent=parent_b), db.key("k", 4, parent=db.key("Alpha", "7")),
            db.key("k", 2, parent=db.key("k", 1)), db.key("k", "é")]
    db.put([db.Entity(key) for key in keys])
    by_server = [e.key for e in db.Query("k").order("__key__").keys_only().iter()]
    assert len(by_server) == len(keys)
    assert sorted(keys, key=split.key_order) == by_server


def test_the_scatter_sample_cuts_the_key_space_into_ranges_that_hold_every_key_once(app):
    put_things(2000)
    sample = db_query.scatter_sample(db.Query("thing"), 4 * split.OVERSAMPLING)
    assert sample is not None and len(sample) == 4 * split.OVERSAMPLING  # the emulator keeps __scatter__
    points = split.split_points(db.Query("thing"), 4)
    assert len(points) == 3 and points == sorted(points, key=split.key_order)
    ranges = in_ranges(db.Query("thing"), points)
    assert sorted(itertools.chain(*ranges)) == list(range(1, 2001))
    assert all(200 < len(ids) < 800 for ids in ranges), [len(ids) for ids in ranges]


def test_without_a_scatter_sample_the_split_takes_exact_quantiles_of_the_querys_keys(app, monkeypatch):
    put_things(2000)
    monkeypatch.setattr(db_query, "scatter_sample", lambda query, size: None)
    points = split.split_points(db.Query("thing"), 4)
    assert [p.id for p in points] == [501, 1001, 1501]
    # A filtered query is sampled on its own keys: the ranges split what it matches, not the kind.
    points = split.split_points(db.Query("thing").filter("year =", 2026), 4)
    assert [len(ids) for ids in in_ranges(db.Query("thing").filter("year =", 2026), points)] == [250] * 4


def test_a_sparse_sample_falls_back_to_the_querys_keys_and_tiny_kinds_get_fewer_ranges(app, monkeypatch):
    put_things(3)
    monkeypatch.setattr(db_query, "scatter_sample", lambda query, size: [db.key("thing", 2)])
    assert [p.id for p in split.split_points(db.Query("thing"), 8)] == [2, 3]
    assert split.split_points(db.Query("nothing"), 4) == []
    assert split.key_ranges([]) == [(None, None)]


# --- what can be split ----------------------------------------------------------------------------

@pytest.mark.parametrize("query, reason", [
    (db.Query("thing").order("n"), "sorted by 'n'"),
    (db.Query("thing").order("__key__", "-n"), "sorted by '-n'"),
    (db.Query("thing").filter("n >", 5), "inequality filter on 'n'"),
    (db.Query("thing").filter("year =", 2026).filter("n <=", 5), "inequality filter on 'n'"),
    (db.Query("thing").limit(10), "limit"),
    (db.Query("thing").set_cursor("Y3Vyc29y"), "cursor"),
    (db.Query(None), "kindless"),
])
def test_queries_that_cannot_be_split_are_refused_at_the_call(app, task_queue, query, reason):
    with pytest.raises(DeferredArgumentError, match=reason) as info:
        Recorder.startIterOnQuery(query, shards=4)
    assert "startIterOnQuery" in str(info.value) and "shards=1" in str(info.value)
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == [] and db.Query(SHARD_KIND).run() == []


@pytest.mark.parametrize("shards", [0, -1, 101, "4", 2.0, True])
def test_a_bad_shard_count_is_refused_at_the_call(app, task_queue, shards):
    with pytest.raises(DeferredArgumentError, match=r"startIterOnQuery: shards must be an int from 1 to 100"):
        Recorder.startIterOnQuery(db.Query("thing"), shards=shards)
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == []


@pytest.mark.parametrize("make", [
    lambda: db.Query("thing").order("__key__"),
    lambda: db.Query("thing").filter("year =", 2026),
    lambda: db.Query("thing").filter("__key__ >", db.key("thing", 100)).filter("year =", 2025),
])
def test_key_ordered_and_equality_filtered_queries_run_sharded(app, task_queue, make):
    put_things(400)
    query = make()
    expected = sorted(e.key.id for e in db.Query.from_dict(query.to_dict()).keys_only().iter())
    run_id = WholeQuery.startIterOnQuery(query, shards=4)
    assert len(task_queue.pending) == 4
    task_queue.run_pending()
    assert sorted(entries()) == expected
    assert finishes() == [("finish", len(expected), None)] and get_run(run_id).status == FINISHED


# --- a sharded run ----------------------------------------------------------------------------------

def test_each_shard_is_its_own_named_chain_and_finish_runs_once_with_the_total(app, task_queue):
    put_things(1234)
    created = _spy(task_queue)
    run_id = Recorder.startIterOnQuery(db.Query("thing"), customData={"by": "admin"}, shards=4)
    assert [t.request.name for t in task_queue.pending] == [step_task_name(run_id, 0, 0, i) for i in range(4)]
    assert len({step_task_name(run_id, 0, 0, i) for i in range(4)} | {step_task_name(run_id, 0, 0)}) == 5
    run = get_run(run_id)
    assert run.status == RUNNING and run.total == 1234 and [s.index for s in run.shards] == [0, 1, 2, 3]

    task_queue.run_pending(max_tasks=8)  # two steps of every shard: the chains run side by side
    run = get_run(run_id)
    assert [s.step for s in run.shards] == [2, 2, 2, 2] and run.processed == 8 * 70 == len(entries())

    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 1235))
    assert finishes() == [("finish", 1234, {"by": "admin"})]
    run = get_run(run_id)
    assert run.status == FINISHED and run.processed == 1234 and run.finished is not None
    assert {s.status for s in run.shards} == {SHARD_DONE} and sum(s.processed for s in run.shards) == 1234
    assert all(s.processed > 0 for s in run.shards)
    names = [t.request.name for t in created]
    assert len(names) == len(set(names))
    assert list_runs(1)[0].shards == run.shards


def test_duplicate_pushes_of_every_step_handle_nothing_twice_and_finish_once(app, client, task_queue):
    put_things(500)
    created = _spy(task_queue)
    run_id = Recorder.startIterOnQuery(db.Query("thing"), shards=4)
    task_queue.run_pending(max_tasks=4)
    handled = len(entries())
    for task in created[:4]:  # step 0 of every shard, delivered again after it committed
        assert post_again(client, task).status_code == 200
    assert len(entries()) == handled and len(task_queue.pending) == 4, "no chain forked"
    task_queue.run_pending()
    for task in list(created):  # every step ever sent, again, after the run finished
        assert post_again(client, task, execution_count=2).status_code == 200
    assert sorted(entries()) == list(range(1, 501))
    assert finishes() == [("finish", 500, None)] and get_run(run_id).status == FINISHED


def test_flaky_entries_are_retried_in_place_in_every_shard(app, task_queue):
    put_things(600)
    FAIL_IDS.update(range(1, 601, 5))
    run_id = FlakyOnce.startIterOnQuery(db.Query("thing"), shards=4)
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 601)) and sum(FAILURES.values()) == 120
    assert finishes() == [("finish", 600, None)] and get_run(run_id).errors == 0


def test_a_crash_between_a_shards_end_and_the_finish_claim_is_recovered_by_its_retry(app, task_queue, monkeypatch):
    put_things(300)
    real = chunk.claim_over_shards
    crashed: list[str] = []

    def crash_once_per_shard(run_key, generation, lease_time, token):
        done = [s["index"] for s in db.Query(SHARD_KIND).run() if s["state"] == SHARD_DONE]
        if len(crashed) < 4:
            crashed.append(token)
            raise RuntimeError(f"worker died after its shard was marked done ({len(done)} done)")
        return real(run_key, generation, lease_time, token)

    monkeypatch.setattr(chunk, "claim_over_shards", crash_once_per_shard)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"), shards=4)
    outcomes = task_queue.run_pending(max_attempts=3, raise_errors=False)
    assert [o.status for o in outcomes] == [500] * 4 + [200] * 4
    assert sorted(entries()) == list(range(1, 301)), "a retried done shard does not scan again"
    assert finishes() == [("finish", 300, None)] and get_run(run_id).status == FINISHED


def test_shards_ending_together_claim_the_finish_once(app, task_queue):
    put_things(200)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"), shards=2)
    run_key = db.key(RUN_KIND, run_id)
    for shard in db.Query(SHARD_KIND).run():
        shard["state"] = SHARD_DONE
        db.put(shard)
    lease_time = datetime.timedelta(minutes=10)
    assert chunk.claim_over_shards(run_key, 0, lease_time, "first") == 0
    with pytest.raises(Exception, match="being finished by another execution"):
        chunk.claim_over_shards(run_key, 0, lease_time, "second")
    assert db.get(run_key)["finish_token"] == "first"


def test_a_failing_finish_is_retried_and_completes_once(app, task_queue, monkeypatch):
    put_things(100)
    calls: list[int] = []

    def finish_fails_once(total, custom):
        calls.append(total)
        if len(calls) == 1:
            raise RuntimeError("finish hiccup")

    run_id = WholeQuery.startIterOnQuery(db.Query("thing"), shards=3)
    task_queue.run_pending(max_tasks=2)
    monkeypatch.setattr(WholeQuery, "handleFinish", staticmethod(finish_fails_once))
    outcomes = task_queue.run_pending(max_attempts=3, raise_errors=False)
    assert [o.status for o in outcomes] == [500, 200] and calls == [100, 100]
    assert get_run(run_id).status == FINISHED and len(entries()) == 100


def test_stop_and_resume_act_on_every_shard(app, task_queue):
    put_things(600)
    created = _spy(task_queue)
    run_id = Recorder.startIterOnQuery(db.Query("thing"), shards=3)
    task_queue.run_pending(max_tasks=3)
    assert stop_run(run_id) is True and get_run(run_id).status == STOPPED
    task_queue.run_pending()  # the shards' queued steps find the run stopped and do nothing
    handled = len(entries())
    assert handled == 3 * 70 and finishes() == []
    assert resume_run(run_id) is True
    assert {t.request.name for t in task_queue.pending} == {step_task_name(run_id, 1, 1, i) for i in range(3)}
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 601)) and finishes() == [("finish", 600, None)]
    run = get_run(run_id)
    assert run.status == FINISHED and run.generation == 1
    names = [t.request.name for t in created]
    assert len(names) == len(set(names))


def test_handle_error_false_in_one_shard_stops_the_run_and_a_resume_completes_it(app, task_queue):
    put_things(400)
    FAIL_IDS.add(350)
    run_id = StopsOnce.startIterOnQuery(db.Query("thing"), shards=4)
    task_queue.run_pending()
    run = get_run(run_id)
    assert run.status == STOPPED and "transient 350" in run.last_error and finishes() == []
    assert 350 not in entries() and len(entries()) < 400
    assert resume_run(run_id) is True
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 401)) and finishes() == [("finish", 400, None)]


def test_a_stop_after_every_shard_is_done_resumes_into_the_finish(app, task_queue):
    put_things(50)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"), shards=2)
    for shard in db.Query(SHARD_KIND).run():
        shard["state"] = SHARD_DONE
        db.put(shard)
    task_queue.pending.clear()
    assert stop_run(run_id) is True and resume_run(run_id) is True
    assert [t.request.name for t in task_queue.pending] == [step_task_name(run_id, 1, 0, 0)]
    task_queue.run_pending()
    assert finishes() == [("finish", 0, None)] and entries() == [] and get_run(run_id).status == FINISHED


def test_a_step_naming_a_shard_its_run_lacks_is_a_dead_letter(app, client, task_queue):
    put_things(10)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"), shards=2)
    task = task_queue.pending[0]
    for payload in ({"shard": 7}, {"shard": None}, {"shard": -1}):
        envelope = json.loads(task.request.body)
        envelope["payload"].update(payload)
        if payload["shard"] is None:
            del envelope["payload"]["shard"]
        body = json.dumps(envelope, separators=(",", ":")).encode()
        headers = {**InlineTransport._headers(task),
                   SIGNATURE_HEADER: sign_request("test-task-secret", "POST", QUERY_ITER_PATH, body)}
        assert client.post(QUERY_ITER_PATH, data=body, headers=headers).status_code == 200
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 3 and all(letter["error"].startswith("PayloadError") for letter in letters)
    assert entries() == [] and get_run(run_id).status == RUNNING
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 11))
