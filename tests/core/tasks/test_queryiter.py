"""QueryIter through the in-process queue, the real /_tasks/queryIter handler and the Datastore emulator."""
from __future__ import annotations

import collections
import datetime

import pytest

from core import current, db
from core.tasks import DeferredArgumentError, message, wire
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.errors import DuplicateTask
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.queryiter.api import DeleteEntitiesIter, MetaQueryIter, QueryIter, query_iter_class
from core.tasks.queryiter.runs import (
    FAILED,
    FINISHED,
    QUERY_ITER_PATH,
    RUN_KIND,
    RUNNING,
    STOPPED,
    get_run,
    list_runs,
    resume_run,
    step_task_name,
    stop_run,
)
from core.tasks.registry import isolated_registry
from core.tasks.runtime import get_runtime
from core.tasks.transports.inline import InlineTransport, QueuedTask

#: What the iterators below saw: ("entry", key id) / ("finish", total, customData) / ...
SEEN: list[tuple] = []
#: Entity ids that make FlakyOnce / StopsOnce / RaisesInHandleError fail, and how often they did.
FAIL_IDS: set[int] = set()
FAILURES: collections.Counter = collections.Counter()


@pytest.fixture(autouse=True)
def _reset():
    SEEN.clear()
    FAIL_IDS.clear()
    FAILURES.clear()
    Environment.restored.clear()


class Recorder(QueryIter):
    """Small chunks that end mid-page: many steps, positions with handled keys."""

    maxEntriesPerChunk = 70
    pageSize = 50

    @classmethod
    def handleEntry(cls, entry, customData):
        SEEN.append(("entry", entry.key.id_or_name))

    @classmethod
    def handleFinish(cls, totalCount, customData):
        SEEN.append(("finish", totalCount, customData))


class WholeQuery(Recorder):
    """The default policy: one chunk takes all a small query has."""

    maxEntriesPerChunk = None
    pageSize = 500


class Slow(Recorder):
    """A time budget far below the work: the chain has to yield on time, not on count."""

    maxEntriesPerChunk = None
    pageSize = 500
    chunkSeconds = 0.05

    @classmethod
    def handleEntry(cls, entry, customData):
        import time

        time.sleep(0.005)
        super().handleEntry(entry, customData)


class FourSecondsAnEntry(Recorder):
    """Each entry takes four seconds of the app's clock: a ten-second budget holds three."""

    maxEntriesPerChunk = None
    pageSize = 500
    chunkSeconds = 10

    @classmethod
    def handleEntry(cls, entry, customData):
        get_runtime().clock.advance(4)
        super().handleEntry(entry, customData)


class FlakyOnce(Recorder):
    """Entities in FAIL_IDS raise once; one in-place retry handles them."""

    entryRetries = 1

    @classmethod
    def handleEntry(cls, entry, customData):
        if entry.key.id in FAIL_IDS and FAILURES[entry.key.id] == 0:
            FAILURES[entry.key.id] += 1
            raise RuntimeError(f"transient {entry.key.id}")
        super().handleEntry(entry, customData)

    @classmethod
    def handleError(cls, entry, customData, exception):
        SEEN.append(("error", entry.key.id))
        return True


class StopsOnce(FlakyOnce):
    """The first failure stops the run (handleError → False); after a resume it works."""

    entryRetries = 0

    @classmethod
    def handleError(cls, entry, customData, exception):
        SEEN.append(("error", entry.key.id))
        return False


class SkipsErrors(StopsOnce):
    @classmethod
    def handleError(cls, entry, customData, exception):
        SEEN.append(("error", entry.key.id))
        return True


class RaisesInHandleError(StopsOnce):
    @classmethod
    def handleError(cls, entry, customData, exception):
        SEEN.append(("error", entry.key.id))
        raise exception


class FinishFailsOnce(WholeQuery):
    @classmethod
    def handleFinish(cls, totalCount, customData):
        SEEN.append(("finish", totalCount, customData))
        if FAILURES["finish"] == 0:
            FAILURES["finish"] += 1
            raise RuntimeError("finish hiccup")


class WithContext(Recorder):
    maxEntriesPerChunk = 25

    @classmethod
    def handleEntry(cls, entry, customData):
        user = current.user.get()
        SEEN.append(("ctx", user and user["id"], current.language.get(), current.task.get().task_name))


class User(dict):
    pass


class Users:
    def load_from_request(self, request):
        return User(id=request.headers["X-Test-User"]) if "X-Test-User" in request.headers else None

    def load_by_id(self, user_id):
        return User(id=user_id)

    def id_of(self, user):
        return user["id"]

    def is_admin(self, user):
        return False


class Environment:
    restored: list = []
    value = None

    def serialize(self):
        return {"tenant": self.value}

    def restore(self, data):
        self.restored.append(data)


@pytest.fixture
def environment():
    return Environment()


@pytest.fixture
def app(make_app, environment):
    return make_app({}, users=Users(), environment=environment, languages=("en", "de"))


def put_things(count: int, kind: str = "thing", **props) -> list[db.Key]:
    entities = []
    for i in range(1, count + 1):
        entity = db.Entity(db.key(kind, i))
        entity.update({"n": i, "year": 2025 + i % 2, **props})
        entities.append(entity)
    db.put(entities)
    return [e.key for e in entities]


def entries() -> list:
    return [s[1] for s in SEEN if s[0] == "entry"]


def finishes() -> list[tuple]:
    return [s for s in SEEN if s[0] == "finish"]


def post_again(client, task: QueuedTask, *, execution_count: int = 1):
    """Deliver a task a second time, as the queue does when it retries."""
    task.execution_count = task.retry_count = execution_count
    return client.post(task.request.path, data=task.request.body, headers=InlineTransport._headers(task))


def steps(outcomes) -> int:
    return sum(1 for o in outcomes if o.kind == "queryIter")


# --- starting ---------------------------------------------------------------------------------

def test_start_returns_at_once_and_the_first_chunk_is_a_named_task(app, task_queue):
    put_things(10)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    assert SEEN == []
    (task,) = task_queue.pending
    assert task.request.path == QUERY_ITER_PATH == "/_tasks/queryIter"
    assert task.request.queue == Recorder.queueName == "query-iter"
    assert task.request.name == step_task_name(run_id, 0, 0)
    assert step_task_name(run_id, 0, 1) != task.request.name != step_task_name(run_id, 1, 0)
    run = get_run(run_id)
    assert run.status == RUNNING and run.processed == 0 and run.iterator == Recorder.iter_id and run.kind == "thing"
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 11))


def test_in_a_request_the_first_chunk_is_queued_before_the_query_is_counted(app, task_queue):
    """Counting the query for the progress bar (a whole scan on the emulator) runs beside the first
    chunk: the step leaves as the run's record commits, not when the starting request ends."""
    put_things(30)
    queued_when_queried: list[list[str]] = []

    def start():
        api = db.get_datastore().client._datastore_api  # observed as tests/services/datastore_rpcs.py does
        for name in ("run_query", "run_aggregation_query"):
            original = getattr(api, name)

            def observed(*args, _original=original, **kwargs):
                queued_when_queried.append([task.request.name for task in task_queue.pending])
                return _original(*args, **kwargs)
            setattr(api, name, observed)
        try:
            return {"run": WholeQuery.startIterOnQuery(db.Query("thing"))}
        finally:
            for name in ("run_query", "run_aggregation_query"):
                delattr(api, name)

    app.add_url_rule("/start-a-run", "start_a_run", start, methods=["POST"])
    run_id = app.test_client().post("/start-a-run").json["run"]
    assert queued_when_queried, "the query was counted"
    assert all(names == [step_task_name(run_id, 0, 0)] for names in queued_when_queried), queued_when_queried
    assert get_run(run_id).total == 30
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 31)) and finishes() == [("finish", 30, None)]


def test_every_entity_is_handled_once_over_many_chunks_and_finish_runs_once(app, task_queue):
    put_things(1234)
    run_id = Recorder.startIterOnQuery(db.Query("thing"), customData={"by": "admin", "when": datetime.date(2026, 1, 2)})
    outcomes = task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 1235))
    assert finishes() == [("finish", 1234, {"by": "admin", "when": datetime.date(2026, 1, 2)})]
    assert steps(outcomes) == 18  # ceil(1234 / 70)
    run = get_run(run_id)
    assert run.status == FINISHED and run.processed == 1234 and run.finished is not None and run.step == 17
    assert run.rate > 0


def test_default_policy_takes_a_small_query_in_one_chunk(app, task_queue):
    put_things(1200)
    WholeQuery.startIterOnQuery(db.Query("thing"))
    outcomes = task_queue.run_pending()
    assert steps(outcomes) == 1
    assert sorted(entries()) == list(range(1, 1201)) and finishes() == [("finish", 1200, None)]


def test_chunks_end_on_their_time_budget(app, task_queue):
    put_things(60)
    Slow.startIterOnQuery(db.Query("thing"))
    outcomes = task_queue.run_pending()
    # 60 entities of 5 ms cannot fit in one 50 ms budget, and every chunk handles at least one.
    assert 1 < steps(outcomes) <= 60
    assert sorted(entries()) == list(range(1, 61)) and finishes() == [("finish", 60, None)]


def test_chunk_budgets_run_on_the_app_clock(app, task_queue):
    put_things(9)
    FourSecondsAnEntry.startIterOnQuery(db.Query("thing"))
    outcomes = task_queue.run_pending()
    assert steps(outcomes) == 3  # three entries of four seconds each spend a ten-second budget
    assert sorted(entries()) == list(range(1, 10)) and finishes() == [("finish", 9, None)]


def test_filters_orders_and_limit_are_honoured(app, task_queue):
    put_things(300)
    Recorder.startIterOnQuery(db.Query("thing").filter("year =", 2026).order("-n").limit(90))
    task_queue.run_pending()
    assert entries() == list(range(299, 119, -2))  # odd n have year 2026
    assert finishes() == [("finish", 90, None)]


def test_an_empty_query_finishes_with_zero(app, task_queue):
    run_id = Recorder.startIterOnQuery(db.Query("nothing"))
    task_queue.run_pending()
    assert finishes() == [("finish", 0, None)] and get_run(run_id).status == FINISHED


@pytest.mark.parametrize("query", [
    db.Query("thing").filter("n IN", [1, 2]),
    db.Query("thing").filter("n", "not in", [1]),
    db.Query("thing").filter("n !=", 3),
])
def test_queries_a_cursor_cannot_resume_are_refused_at_the_call(app, task_queue, query):
    with pytest.raises(DeferredArgumentError, match="cursor cannot resume"):
        Recorder.startIterOnQuery(query)
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == []


def test_custom_data_that_cannot_travel_fails_at_the_call(app, task_queue):
    class Opaque:
        pass

    with pytest.raises(DeferredArgumentError) as info:
        Recorder.startIterOnQuery(db.Query("thing"), customData={"inner": [Opaque()]})
    assert isinstance(info.value, TypeError) and "Opaque" in str(info.value) and "customData" in str(info.value)
    with pytest.raises(TypeError):
        Recorder.startIterOnQuery("thing")
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == []


def test_a_start_inside_a_rolled_back_transaction_leaves_nothing(app, task_queue):
    def start_then_fail():
        Recorder.startIterOnQuery(db.Query("thing"))
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        db.run_in_transaction(start_then_fail)
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == []


# --- classes ----------------------------------------------------------------------------------

def test_classes_are_registered_under_a_stable_id(app):
    assert Recorder.iter_id == f"{__name__}.Recorder"
    assert query_iter_class(Recorder.iter_id) is Recorder
    assert query_iter_class("core.tasks.queryiter.DeleteEntitiesIter") is DeleteEntitiesIter
    assert isinstance(Recorder, MetaQueryIter)


def test_classes_that_cannot_be_found_by_name_are_refused():
    with isolated_registry() as registry:
        with pytest.raises(TypeError, match="inside a function"):
            class Local(QueryIter):
                pass

        namespace = {"__module__": __name__, "__qualname__": "Twin"}
        MetaQueryIter("Twin", (QueryIter,), dict(namespace))
        with pytest.raises(DuplicateTask):
            MetaQueryIter("Twin", (QueryIter,), dict(namespace))
        assert f"{__name__}.Twin" in registry.query_iters


# --- retries, duplicates and the finish ---------------------------------------------------------

def _spy(task_queue) -> list[QueuedTask]:
    """Record every task the inline queue creates, with the object it keeps."""
    created: list[QueuedTask] = []
    transport = task_queue.transport
    original = transport.enqueue_many

    def spy(requests):
        before = len(transport.pending)
        results = original(requests)
        created.extend(transport.pending[before:])
        return results

    transport.enqueue_many = spy
    return created


def test_a_retried_step_never_forks_the_chain(app, client, task_queue):
    put_things(200)
    created = _spy(task_queue)
    Recorder.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending(max_tasks=1)
    first = created[0]
    assert len(task_queue.pending) == 1 and len(entries()) == 70
    # The queue delivers step 0 again (its answer was lost): nothing is handled, nothing queued.
    assert post_again(client, first).status_code == 200
    assert len(task_queue.pending) == 1 and len(entries()) == 70
    assert len(created) == 2, "the successor's name was refused the second time"
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 201)) and finishes() == [("finish", 200, None)]


def test_a_retried_step_sends_a_lost_successor_again(app, client, task_queue):
    put_things(100)
    created = _spy(task_queue)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending(max_tasks=1)
    lost = task_queue.pending.pop()  # committed, but the successor never reached the queue
    task_queue.transport.names.discard(lost.request.name)
    assert post_again(client, created[0]).status_code == 200
    (again,) = task_queue.pending
    assert again.request.name == lost.request.name == step_task_name(run_id, 0, 1)
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 101)) and len(finishes()) == 1


def test_finish_runs_once_when_its_step_is_delivered_again(app, client, task_queue):
    put_things(30)
    created = _spy(task_queue)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    assert post_again(client, created[0]).status_code == 200
    assert finishes() == [("finish", 30, None)] and len(entries()) == 30
    assert get_run(run_id).status == FINISHED


def test_a_failing_finish_is_retried_and_completes_once(app, task_queue):
    put_things(30)
    run_id = FinishFailsOnce.startIterOnQuery(db.Query("thing"))
    outcomes = task_queue.run_pending(max_attempts=3, raise_errors=False)
    assert [o.status for o in outcomes] == [500, 200]
    assert finishes() == [("finish", 30, None)] * 2 and len(entries()) == 30, "the retry only finishes"
    assert get_run(run_id).status == FINISHED


def test_a_claimed_finish_is_left_to_its_holder_until_the_lease_ends(app, client, task_queue):
    put_things(5)
    created = _spy(task_queue)
    run_id = WholeQuery.startIterOnQuery(db.Query("thing"))
    first = created[0]
    key = db.key(RUN_KIND, run_id)
    record = db.get(key)
    record.update({"finishing_since": datetime.datetime.now(datetime.UTC), "finish_token": "other"})
    db.put(record)
    task_queue.pending.clear()
    assert stop_run(run_id) is False, "a run that is finishing cannot be stopped"
    assert post_again(client, first).status_code == 500  # another execution holds the claim
    assert finishes() == [] and entries() == []
    record = db.get(key)
    record["finishing_since"] -= WholeQuery.finishLease + datetime.timedelta(seconds=1)
    db.put(record)
    assert post_again(client, first, execution_count=2).status_code == 200  # its holder died
    assert finishes() == [("finish", 0, None)] and get_run(run_id).status == FINISHED


# --- errors -----------------------------------------------------------------------------------

def test_entries_failing_once_are_retried_in_place(app, task_queue):
    put_things(500)
    FAIL_IDS.update(range(1, 501, 5))  # 20 %
    FlakyOnce.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 501)) and sum(FAILURES.values()) == 100
    assert [s for s in SEEN if s[0] == "error"] == []
    assert finishes() == [("finish", 500, None)]


def test_handle_error_false_stops_the_run_and_resume_completes_it(app, task_queue):
    put_things(150)
    FAIL_IDS.add(123)
    run_id = StopsOnce.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    run = get_run(run_id)
    assert run.status == STOPPED and run.processed == 122 and "transient 123" in run.last_error
    assert run.cursor is not None and sorted(entries()) == list(range(1, 123))
    assert task_queue.pending == [] and finishes() == []

    assert resume_run(run_id) is True
    assert resume_run(run_id) is False, "a running run is not resumed twice"
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 151)), "each entity handled once, 123 after the resume"
    assert finishes() == [("finish", 150, None)]
    run = get_run(run_id)
    assert run.status == FINISHED and run.generation == 1


def test_handle_error_true_skips_and_counts(app, task_queue):
    put_things(80)
    FAIL_IDS.update({3, 77})
    run_id = SkipsErrors.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    assert sorted(entries()) == [i for i in range(1, 81) if i not in (3, 77)]
    assert finishes() == [("finish", 80, None)] and get_run(run_id).errors == 2


def test_raising_in_handle_error_retries_the_chunk_from_the_failed_entity(app, task_queue):
    put_things(120)
    FAIL_IDS.add(100)
    run_id = RaisesInHandleError.startIterOnQuery(db.Query("thing"))
    outcomes = task_queue.run_pending(max_attempts=3, raise_errors=False)
    assert [o.status for o in outcomes] == [200, 500, 200]
    assert sorted(entries()) == list(range(1, 121)), "nothing before the failed entity is handled again"
    assert finishes() == [("finish", 120, None)] and "transient 100" in get_run(run_id).last_error


def test_an_unknown_class_is_a_recorded_permanent_failure(app, client, task_queue):
    put_things(3)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    record = db.get(db.key(RUN_KIND, run_id))
    record["class"] = "gone.module.Vanished"  # a class removed while its run was queued
    db.put(record)
    task = task_queue.pending.pop()
    body = task.request.body.replace(Recorder.iter_id.encode(), b"gone.module.Vanished")
    headers = dict(InlineTransport._headers(task))
    headers[SIGNATURE_HEADER] = sign_request("test-task-secret", "POST", QUERY_ITER_PATH, body)
    assert client.post(QUERY_ITER_PATH, data=body, headers=headers).status_code == 200
    run = get_run(run_id)
    assert run.status == FAILED and "gone.module.Vanished" in run.last_error
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["kind"] == "queryIter" and "gone.module.Vanished" in letter["error"]
    assert entries() == []


def test_a_step_naming_another_class_than_its_run_is_a_dead_letter_and_runs_nothing(app, client, task_queue):
    keys = put_things(3)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    task = task_queue.pending.pop()
    body = task.request.body.replace(Recorder.iter_id.encode(), DeleteEntitiesIter.iter_id.encode())
    headers = dict(InlineTransport._headers(task))
    headers[SIGNATURE_HEADER] = sign_request("test-task-secret", "POST", QUERY_ITER_PATH, body)
    assert client.post(QUERY_ITER_PATH, data=body, headers=headers).status_code == 200
    assert all(entity is not None for entity in db.get(keys)), "the run record decides the class"
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["error"].startswith("PayloadError") and get_run(run_id).status == RUNNING
    assert client.post(QUERY_ITER_PATH, data=task.request.body,
                       headers=InlineTransport._headers(task)).status_code == 200
    assert sorted(entries()) == [1, 2, 3]


def test_forged_and_tampered_chunk_requests_run_nothing(app, client, task_queue):
    put_things(5)
    Recorder.startIterOnQuery(db.Query("thing"))
    task = task_queue.pending.pop()
    body, headers = task.request.body, dict(InlineTransport._headers(task))
    unsigned = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
    assert client.post(QUERY_ITER_PATH, data=body, headers=unsigned).status_code == 403
    forged = dict(headers, **{SIGNATURE_HEADER: sign_request("wrong", "POST", QUERY_ITER_PATH, body)})
    assert client.post(QUERY_ITER_PATH, data=body, headers=forged).status_code == 403
    assert client.post(QUERY_ITER_PATH, data=body.replace(b'"step":0', b'"step":1'),
                       headers=headers).status_code == 403
    assert client.post("/_tasks/deferred", data=body, headers=headers).status_code == 403
    assert entries() == [] and task_queue.pending == []
    assert client.post(QUERY_ITER_PATH, data=body, headers=headers).status_code == 200
    assert sorted(entries()) == [1, 2, 3, 4, 5]


# --- stop, resume, dashboard ---------------------------------------------------------------------

def test_stop_then_resume_continues_where_it_stopped(app, task_queue):
    put_things(300)
    created = _spy(task_queue)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending(max_tasks=2)
    assert stop_run(run_id) is True and stop_run(run_id) is False
    task_queue.run_pending()  # the step queued before the stop does nothing
    assert len(entries()) == 140 and get_run(run_id).status == STOPPED
    assert resume_run(run_id) is True
    task_queue.run_pending()
    assert sorted(entries()) == list(range(1, 301)) and finishes() == [("finish", 300, None)]
    names = [t.request.name for t in created]
    assert len(names) == len(set(names)), "a resumed run uses fresh step names"


def test_stop_and_resume_of_an_unknown_run(app):
    from core.tasks.errors import NotFound

    with pytest.raises(NotFound):
        stop_run("nope")
    with pytest.raises(NotFound):
        resume_run("nope")


def test_list_runs_newest_first_with_rates(app, task_queue):
    put_things(50)
    first = WholeQuery.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    second = Recorder.startIterOnQuery(db.Query("thing"))
    runs = list_runs(10)
    assert [r.id for r in runs] == [second, first]
    assert runs[1].status == FINISHED and runs[1].processed == 50 and runs[1].rate > 0
    assert runs[0].status == RUNNING and runs[0].processed == 0 and runs[0].rate == 0


# --- context ----------------------------------------------------------------------------------

def test_user_language_and_custom_environment_reach_every_chunk(app, client, task_queue, environment):
    put_things(100)

    @app.route("/start")
    def start():
        environment.value = "acme"
        WithContext.startIterOnQuery(db.Query("thing"))
        return "ok"

    assert client.get("/start", headers={"X-Test-User": "u7", "Accept-Language": "de"}).status_code == 200
    outcomes = task_queue.run_pending()
    # Four chunks of 25; the fifth step only learns that the query is exhausted.
    assert steps(outcomes) == 5
    seen = [s for s in SEEN if s[0] == "ctx"]
    assert len(seen) == 100 and {(s[1], s[2]) for s in seen} == {("u7", "de")}
    assert len({s[3] for s in seen}) == 4, "each chunk ran as its own task"
    assert Environment.restored == [{"tenant": "acme"}] * 5


# --- DeleteEntitiesIter -------------------------------------------------------------------------

class DeleteInSmallSteps(DeleteEntitiesIter):
    maxEntriesPerChunk = 70
    pageSize = 50

    @classmethod
    def handleFinish(cls, totalCount, customData):
        SEEN.append(("finish", totalCount, customData))


def test_delete_entities_iter_empties_the_kind(app, task_queue):
    put_things(400, kind="doomed")
    put_things(20, kind="kept")
    DeleteEntitiesIter.startIterOnQuery(db.Query("doomed"))
    task_queue.run_pending()
    assert db.Query("doomed").keys_only().run() == []
    assert len(db.Query("kept").keys_only().run()) == 20


def test_deleting_in_chunks_that_end_mid_page_misses_nothing(app, task_queue):
    put_things(333, kind="doomed")
    run_id = DeleteInSmallSteps.startIterOnQuery(db.Query("doomed").filter("year =", 2026))
    task_queue.run_pending()
    left = db.Query("doomed").run()
    assert len(left) == 166 and {e["year"] for e in left} == {2025}
    assert finishes() == [("finish", 167, None)] and get_run(run_id).processed == 167


# --- batches ----------------------------------------------------------------------------------

class Batched(QueryIter):
    """Batches of up to 40; a batch holding a FAIL_IDS entity fails and is handled one by one."""

    pageSize = 40
    maxEntriesPerChunk = 100

    @classmethod
    def handleEntry(cls, entry, customData):
        if entry.key.id in FAIL_IDS:
            raise RuntimeError(f"bad {entry.key.id}")
        SEEN.append(("entry", entry.key.id))

    @classmethod
    def handleEntries(cls, entries, customData):
        if any(e.key.id in FAIL_IDS for e in entries):
            raise RuntimeError("batch refused")
        SEEN.extend(("entry", e.key.id) for e in entries)
        SEEN.append(("batch", len(entries)))

    @classmethod
    def handleError(cls, entry, customData, exception):
        SEEN.append(("error", entry.key.id))
        return True

    @classmethod
    def handleFinish(cls, totalCount, customData):
        SEEN.append(("finish", totalCount, customData))


class OneByOne(Batched):
    """Overrides handleEntry alone: the inherited batch hook must not bypass it."""

    @classmethod
    def handleEntry(cls, entry, customData):
        SEEN.append(("single", entry.key.id))


def test_batches_are_used_and_a_failing_batch_is_handled_one_by_one(app, task_queue):
    put_things(200)
    FAIL_IDS.add(57)
    run_id = Batched.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    assert sorted(entries()) == [i for i in range(1, 201) if i != 57]
    assert [s for s in SEEN if s[0] == "error"] == [("error", 57)]
    # Chunk 1: a batch, the failed batch one by one, then a page cut to what the cap of 100 leaves.
    # Chunk 2: two whole pages and the rest.
    assert [s[1] for s in SEEN if s[0] == "batch"] == [40, 20, 40, 40, 20]
    assert finishes() == [("finish", 200, None)] and get_run(run_id).errors == 1


def test_a_subclass_overriding_handle_entry_alone_is_not_batched(app, task_queue):
    put_things(30)
    OneByOne.startIterOnQuery(db.Query("thing"))
    task_queue.run_pending()
    assert sorted(s[1] for s in SEEN if s[0] == "single") == list(range(1, 31))
    assert [s for s in SEEN if s[0] == "batch"] == []


# --- checkpoints ------------------------------------------------------------------------------

class Crash(BaseException):
    """Stands for the process dying: nothing in the app catches it."""


class CrashesOnce(Recorder):
    """Commits progress at every page end; the process 'dies' at entity 55 the first time."""

    maxEntriesPerChunk = None
    pageSize = 20
    checkpointSeconds = 0.0

    @classmethod
    def handleEntry(cls, entry, customData):
        if entry.key.id == 55 and FAILURES["crash"] == 0:
            FAILURES["crash"] += 1
            raise Crash()
        super().handleEntry(entry, customData)


def test_a_crashed_chunk_goes_on_from_its_last_checkpoint(app, client, task_queue):
    put_things(100)
    created = _spy(task_queue)
    run_id = CrashesOnce.startIterOnQuery(db.Query("thing"))
    with pytest.raises(Crash):
        task_queue.run_pending()
    assert get_run(run_id).processed == 40, "the last page end before the crash"
    assert post_again(client, created[0]).status_code == 200  # the queue's retry
    counts = collections.Counter(entries())
    assert sorted(counts) == list(range(1, 101))
    assert {i for i, n in counts.items() if n == 2} == set(range(41, 55)), "only work after the checkpoint is redone"
    assert finishes() == [("finish", 100, None)] and get_run(run_id).processed == 100


# --- the run record's size ----------------------------------------------------------------------

def test_positions_stay_small_with_long_key_names(app, task_queue):
    names = [f"{i:04d}" + "k" * 1400 for i in range(120)]
    entities = [db.Entity(db.key("long", name)) for name in names]
    db.put(entities)
    run_id = Recorder.startIterOnQuery(db.Query("long"))
    task_queue.run_pending(max_tasks=1)  # stops after 70, in the middle of the second page of 50
    record = db.get(db.key(RUN_KIND, run_id))
    assert record["processed"] == 70 and len(record["done"]) < 30 * 20
    task_queue.run_pending()
    assert sorted(entries()) == names and finishes() == [("finish", 120, None)]


def test_data_too_large_for_the_run_record_fails_at_the_call(app, task_queue):
    with pytest.raises(DeferredArgumentError, match="fit in the run record"):
        Recorder.startIterOnQuery(db.Query("thing"), customData=b"x" * 700_000)
    assert task_queue.pending == [] and db.Query(RUN_KIND).run() == []


# --- the example module -------------------------------------------------------------------------

def test_example_reindex_module(make_app):
    from example import MODULES, SessionUsers
    from example.reindex import REPORT_KIND
    from example.users import create_user
    from tests.conftest import TaskQueue
    from tests.example.test_users import sign_in

    app = make_app(MODULES, users=SessionUsers(), languages=("en", "de"))
    queue = TaskQueue(app)
    for i in range(1, 31):
        invoice = db.Entity(db.key("invoice", i))
        invoice.update({"year": 2025 + i % 2, "customer": f"ACME Corp {i}", "title": "Consulting"})
        db.put(invoice)
    create_user("root", "pw-123456", admin=True)
    create_user("bob", "pw-123456")
    client = app.test_client()
    sign_in(client, "bob", "pw-123456")
    assert client.post("/reindex/start", data={"year": "2026"}).status_code == 403
    sign_in(client, "root", "pw-123456")
    started = client.post("/reindex/start", data={"year": "2026"}, headers={"Accept-Language": "de"}).get_json()
    queue.run_pending()
    assert client.get(f"/reindex/status/{started['run']}").get_json()["status"] == FINISHED
    indexed = {e.key.id: e.get("search") for e in db.Query("invoice").run()}
    assert indexed[3] == ["3", "acme", "consulting", "corp"] and indexed[4] is None
    report = db.get(db.key(REPORT_KIND, started["report"]))
    assert (report["total"], report["by"], report["language"]) == (15, "root", "de")


@pytest.mark.parametrize("field", ["gen", "step"])
def test_a_step_number_beyond_64_bits_is_a_dead_letter(app, client, task_queue, field):
    """Datastore integers are 64-bit; a larger one (the fuzz found 10**5000) is a malformed step."""
    put_things(1)
    run_id = Recorder.startIterOnQuery(db.Query("thing"))
    task = task_queue.pending.pop()
    envelope = message.decode(task.request.body)
    envelope.payload[field] = 10 ** 5000
    with app.app_context():
        request = wire.build_request(get_runtime(), envelope, QUERY_ITER_PATH)
    assert client.post(QUERY_ITER_PATH, data=request.body, headers=request.headers).status_code == 200
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["error"].startswith("PayloadError") and get_run(run_id).status == RUNNING
    assert entries() == []
