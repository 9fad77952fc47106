"""Expiry and unique tasks end to end: gunicorn serving the app, the durable local queue pushing over
HTTP, the Datastore emulator holding records, claims and each run.

gunicorn serves :func:`probe_app`: the example app plus an expiring and a unique task that record a
``flow_run`` entity per execution, and routes to call them and to pause or resume the queue (so the
test decides when the queue reaches the tasks).
"""
from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks import callDeferred, queue_admin
from core.tasks.records import RECORD_KIND
from core.tasks.runtime import get_runtime
from core.tasks.unique import CLAIM_KIND
from tests.e2e.conftest import wait_for

PROBE_APP = f"{__name__}:probe_app()"
RUN_KIND = "flow_run"


# --- the probe app (runs inside gunicorn) ------------------------------------------------------

def _ran(token: str, index: int) -> None:
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "index": index})
    db.put(run)


@callDeferred(track=True, expires=2)
def short_lived(token: str, index: int) -> None:
    _ran(token, index)


@callDeferred(unique=True)
def reindex(token: str, index: int) -> None:
    _ran(token, index)


class FlowProbes(Module):
    @exposed(methods=("POST",))
    def expiring(self, token: str, count: str = "1") -> dict[str, Any]:
        return {"ids": [short_lived(token, index).id for index in range(int(count))]}

    @exposed(methods=("POST",))
    def unique(self, token: str, index: str) -> dict[str, Any]:
        return {"id": reindex(token, int(index)).id}

    @exposed(methods=("POST",))
    def pause(self) -> str:
        queue_admin.pause(get_runtime(), "default")
        return "paused"

    @exposed(methods=("POST",))
    def resume(self) -> str:
        queue_admin.resume(get_runtime(), "default")
        return "resumed"


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probes."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "flowprobe": FlowProbes}, users=SessionUsers(), languages=("en", "de"))


# --- utilities -----------------------------------------------------------------------------------

def _post(stack: Any, route: str, **params: Any) -> Any:
    response = requests.post(f"{stack.url}/flowprobe/{route}", data={k: str(v) for k, v in params.items()},
                             timeout=60)
    assert response.status_code == 200, response.text
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else None


def _runs(token: str) -> list[db.Entity]:
    return db.Query(RUN_KIND).filter("token =", token).run()


def _states(ids: list[str]) -> list[str | None]:
    return [record["state"] if record is not None else None
            for record in db.get([db.key(RECORD_KIND, task_id) for task_id in ids])]


# --- the tests -------------------------------------------------------------------------------------

def test_a_hundred_tasks_that_expire_before_the_queue_reaches_them_never_run_and_end_expired(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    token = uuid.uuid4().hex
    _post(stack, "pause")
    ids = _post(stack, "expiring", token=token, count=100)["ids"]
    assert len(set(ids)) == 100
    time.sleep(2.5)  # past their expiry, on the wall clock the stack runs on
    _post(stack, "resume")
    wait_for(lambda: _states(ids).count("expired") == 100, timeout=120, message="a hundred expired records")
    assert _runs(token) == []


def test_fifty_concurrent_callers_over_five_keys_give_five_runs(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    token = uuid.uuid4().hex
    _post(stack, "pause")  # the first runs must not free their keys while callers still call
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(lambda n: _post(stack, "unique", token=token, index=n % 5)["id"], range(50)))
    assert len(set(ids)) == 5
    _post(stack, "resume")
    wait_for(lambda: len(_runs(token)) >= 5 and db.Query(CLAIM_KIND).run() == [], timeout=120,
             message="five runs and their claims freed")
    assert sorted(run["index"] for run in _runs(token)) == [0, 1, 2, 3, 4]
    assert _states(sorted(set(ids))) == ["succeeded"] * 5
