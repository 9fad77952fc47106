"""QueryIter end to end: gunicorn serving the app, the durable local queue pushing its steps over
HTTP, the Datastore emulator holding entities and run records.

gunicorn serves :func:`probe_app` of this module: the example app plus probe iterators that leave
a trace on every entity they handle (how often, by which process and task, in which language and
for whom) and one ``qi_finish`` entity per ``handleFinish`` call, so the test can count from outside.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import requests

from core import current, db
from core.module import Module, exposed
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.queryiter import split
from core.tasks.queryiter.api import DeleteEntitiesIter, QueryIter, start_run
from core.tasks.queryiter.runs import (
    FINISHED,
    QUERY_ITER_PATH,
    RUN_KIND,
    SHARD_DONE,
    SHARD_KIND,
    STOPPED,
    get_run,
    resume_run,
)
from tests.e2e.conftest import sign_in, wait_for

PROBE_APP = f"{__name__}:probe_app()"
ITEM = "qi_item"


# --- the probe app (runs inside gunicorn) ------------------------------------------------------

def _touch(entry: db.Entity) -> None:
    user = current.user.get()
    info = current.task.get()
    entry.update({"touches": int(entry.get("touches") or 0) + 1, "pid": os.getpid(), "lang": current.language.get(),
                  "user": user.key.name if user is not None else None, "task": info.task_name if info else None})
    db.put(entry)


def _fail_once(entry: db.Entity) -> None:
    """Raise the first time this entity is met, ever (the mark is stored before raising)."""
    if not entry.get("failed"):
        entry["failed"] = True
        db.put(entry)
        raise RuntimeError(f"failing once on purpose at {entry.key.id_or_name}")


def _wait_to_be_killed(token: str) -> None:
    """Name this process as the victim and wait inside the chunk until the test kills it.

    Only the first time: the retried chunk finds the victim recorded and goes on.
    """
    key = db.key("qi_victim", token)
    if db.get(key) is not None:
        return
    victim = db.Entity(key)
    victim["pid"] = os.getpid()
    db.put(victim)
    time.sleep(30)


class Touch(QueryIter):
    """Touches every entity; with ``flaky`` every fifth raises once (retried in place); the process
    handling entity ``kill_at`` waits there to be killed."""

    chunkSeconds = 2.0
    entryRetries = 1

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        if customData.get("flaky") and entry.key.id % 5 == 0:
            _fail_once(entry)
        if entry.key.id == customData.get("kill_at"):
            _wait_to_be_killed(customData["token"])
        _touch(entry)

    @classmethod
    def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        finish = db.Entity(db.key("qi_finish", uuid.uuid4().hex))
        finish.update({"token": customData["token"], "total": totalCount, "pid": os.getpid()})
        db.put(finish)


class StopAt(Touch):
    """Fails once at ``stop_at`` and stops the run there (handleError → False)."""

    entryRetries = 0

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        if entry.key.id == customData["stop_at"]:
            _fail_once(entry)
        _touch(entry)

    @classmethod
    def handleError(cls, entry: db.Entity, customData: Any, exception: Exception) -> bool:  # noqa: N802, N803
        return False


class Purge(DeleteEntitiesIter):
    @classmethod
    def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        Touch.handleFinish(totalCount, customData)


ITERATORS: dict[str, type[QueryIter]] = {"touch": Touch, "stop_at": StopAt, "purge": Purge}


class QueryIterProbes(Module):
    @exposed(methods=("POST",))
    def start(self, iterator: str, kind: str, token: str, flaky: str = "", stop_at: str = "",
              kill_at: str = "", shards: str = "1") -> dict[str, Any]:
        custom = {"token": token, "flaky": bool(flaky), "stop_at": int(stop_at) if stop_at else None,
                  "kill_at": int(kill_at) if kill_at else None}
        return {"run": ITERATORS[iterator].startIterOnQuery(db.Query(kind), customData=custom, shards=int(shards))}

    @exposed(methods=("POST",))
    def resume(self, run: str) -> dict[str, Any]:
        return {"resumed": resume_run(run)}


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probes."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "qiprobe": QueryIterProbes}, users=SessionUsers(), languages=("en", "de"))


# --- utilities -----------------------------------------------------------------------------------

def put_items(count: int, kind: str = ITEM) -> None:
    entities = []
    for i in range(1, count + 1):
        entity = db.Entity(db.key(kind, i))
        entity["n"] = i
        entities.append(entity)
    db.put(entities)


def items(kind: str = ITEM) -> list[db.Entity]:
    return list(db.Query(kind).iter())


def finishes(token: str) -> list[db.Entity]:
    return db.Query("qi_finish").filter("token =", token).run()


def start(stack: Any, iterator: str, kind: str = ITEM, session: Any = requests, **form: str) -> tuple[str, str]:
    token = uuid.uuid4().hex
    response = session.post(f"{stack.url}/qiprobe/start", data={"iterator": iterator, "kind": kind, "token": token,
                                                                **form}, headers={"Accept-Language": "de"})
    response.raise_for_status()
    return response.json()["run"], token


def wait_status(run_id: str, status: str, timeout: float = 120) -> Any:
    return wait_for(lambda: (run := get_run(run_id)) is not None and run.status == status and run,
                    timeout=timeout, interval=0.2, message=f"run {run_id} to be {status}")


# --- tests ---------------------------------------------------------------------------------------

def test_five_thousand_entities_are_each_handled_once_with_the_callers_context(make_stack):
    from example.users import create_user

    stack = make_stack(app_module=PROBE_APP)
    put_items(5000)
    create_user("ada", "s3cret-pass")
    session = requests.Session()
    sign_in(session, stack.url, "ada", "s3cret-pass")
    run_id, token = start(stack, "touch", session=session)
    run = wait_status(run_id, FINISHED)
    seen = items()
    assert len(seen) == 5000 and {e.get("touches") for e in seen} == {1}
    assert {(e["lang"], e["user"]) for e in seen} == {("de", "ada")}
    (finish,) = finishes(token)
    assert finish["total"] == 5000 and run.processed == 5000
    assert get_run(run_id).rate > 0


def test_flaky_entries_and_a_killed_worker_lose_nothing_and_finish_once(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    put_items(2000)
    run_id, token = start(stack, "touch", flaky="1", kill_at="1300")

    victim = wait_for(lambda: db.get(db.key("qi_victim", token)), timeout=60, message="a chunk to reach 1300")
    assert victim["pid"] in stack.worker_pids()
    touched_at_kill = sum(1 for e in items() if e.get("touches"))
    os.kill(victim["pid"], signal.SIGKILL)  # the worker is inside handleEntry, in the middle of a chunk
    assert 0 < touched_at_kill < 2000 and get_run(run_id).status != FINISHED

    run = wait_status(run_id, FINISHED)
    time.sleep(1.0)  # a second handleFinish would show up now
    seen = items()
    assert len(seen) == 2000 and all(e.get("touches", 0) >= 1 for e in seen)
    assert sum(1 for e in seen if e.get("failed")) == 400, "every fifth entity raised exactly once"
    # The victim died inside handleEntry(1300): only a second execution of its chunk can have touched it.
    assert seen[1299]["touches"] >= 1 and seen[1299]["pid"] != victim["pid"]
    assert [f["total"] for f in finishes(token)] == [2000]
    assert run.processed == 2000


def test_four_shards_with_flaky_entries_and_a_killed_worker_handle_each_entity_once_and_finish_once(make_stack):
    count = 2000  # bench.queryiter runs the same over 20,000
    stack = make_stack(app_module=PROBE_APP)
    put_items(count)
    run_id, token = start(stack, "touch", flaky="1", kill_at="1150", shards="4")  # early in a middle shard
    run = get_run(run_id)
    assert len(run.shards) == 4 and run.total == count

    victim = wait_for(lambda: db.get(db.key("qi_victim", token)), timeout=300, message="a chunk to reach 1150")
    assert victim["pid"] in stack.worker_pids()
    # What each shard had committed before the kill: only entities after that can be handled again.
    committed = {s["index"]: int(s["processed"]) for s in db.Query(SHARD_KIND).filter("run =", run_id).run()}
    os.kill(victim["pid"], signal.SIGKILL)  # inside handleEntry; other chunks in that worker die too

    run = wait_status(run_id, FINISHED, timeout=600)
    time.sleep(1.0)  # a second handleFinish would show up now
    seen = {e.key.id: e for e in items()}
    assert len(seen) == count and all(e.get("touches", 0) >= 1 for e in seen.values())
    assert sum(1 for e in seen.values() if e.get("failed")) == count // 5, "every fifth entity raised exactly once"
    assert seen[1150]["touches"] == 1 and seen[1150]["pid"] != victim["pid"]
    again = set()
    for shard in db.Query(SHARD_KIND).filter("run =", run_id).run():
        ids = [e.key.id for e in split.in_range(db.Query(ITEM), shard["lo"], shard["hi"]).keys_only().iter()]
        assert shard["state"] == SHARD_DONE and shard["processed"] == len(ids)
        twice = [i for i in ids if seen[i]["touches"] > 1]
        assert all(ids.index(i) >= committed[shard["index"]] for i in twice), (shard["index"], twice)
        again.update(twice)
    assert {i for i, e in seen.items() if e["touches"] > 1} == again
    assert [f["total"] for f in finishes(token)] == [count]
    assert run.processed == count and sum(s.processed for s in run.shards) == count


def test_handle_error_false_stops_the_run_and_a_resume_completes_it(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    put_items(700)
    run_id, token = start(stack, "stop_at", stop_at="550")  # past the first page: a cursor is recorded
    run = wait_status(run_id, STOPPED)
    assert run.processed == 549 and run.cursor is not None and "failing once on purpose at 550" in run.last_error
    touched = sorted(e.key.id for e in items() if e.get("touches"))
    assert touched == list(range(1, 550)) and finishes(token) == []

    requests.post(f"{stack.url}/qiprobe/resume", data={"run": run_id}).raise_for_status()
    run = wait_status(run_id, FINISHED)
    assert {e["touches"] for e in items()} == {1}
    assert [f["total"] for f in finishes(token)] == [700] and run.generation == 1


def test_delete_entities_iter_leaves_the_kind_empty(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    put_items(2000, kind="qi_doomed")
    put_items(10)
    run_id, token = start(stack, "purge", kind="qi_doomed")
    wait_status(run_id, FINISHED)
    assert db.Query("qi_doomed").keys_only().run() == []
    assert len(items()) == 10
    assert [f["total"] for f in finishes(token)] == [2000]


def test_a_forged_chunk_request_runs_nothing(make_stack):
    from core.tasks.runtime import TaskRuntime
    from core.tasks.transports.inline import InlineTransport

    stack = make_stack(app_module=PROBE_APP)
    put_items(20)
    # A real first step, signed with the app's secret but kept out of the queue.
    transport = InlineTransport()
    run_id = start_run(Touch, db.Query(ITEM), {"token": "forged"}, runtime=TaskRuntime(stack.settings,
                                                                                       transport=transport))
    (task,) = transport.pending
    body, good = task.request.body, dict(task.request.headers)
    queue = {"X-AppEngine-QueueName": "query-iter", "X-AppEngine-TaskName": "x"}
    url = stack.url + QUERY_ITER_PATH
    forged = [
        ({}, body),                                                                       # unsigned
        ({SIGNATURE_HEADER: sign_request("wrong-secret", "POST", QUERY_ITER_PATH, body)}, body),
        ({SIGNATURE_HEADER: sign_request(stack.settings.tasks_secret, "POST", "/_tasks/deferred", body)}, body),
        (good, body.replace(b'"step":0', b'"step":1')),                                  # tampered
        ({SIGNATURE_HEADER: "t=1,v1=00"}, body),                                          # malformed
    ]
    for headers, data in forged:
        response = requests.post(url, data=data, headers={**queue, **headers})
        assert 400 <= response.status_code < 500, (headers, response.status_code)
    time.sleep(0.5)
    assert not any(e.get("touches") for e in items())
    record = db.get(db.key(RUN_KIND, run_id))
    assert record["processed"] == 0 and record["step"] == 0

    assert requests.post(url, data=body, headers={**queue, **good}).status_code == 200  # the real one works
    wait_status(run_id, FINISHED)
    assert {e["touches"] for e in items()} == {1}
