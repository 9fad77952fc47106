"""``async def`` targets through gunicorn, the durable local queue and the Datastore emulator.

gunicorn serves :func:`build_app`: a module that defers an ``async def`` function and starts a
QueryIter whose hooks are ``async def``, plus an ``async def`` periodic task in its own cron group.
Each target writes to Datastore only after it awaited, so a mark proves the coroutine ran to its end.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks import PeriodicTask, QueryIter, callDeferred
from core.tasks.auth.signing import sign_cron_ping
from core.tasks.periodic.kind import STATE_KIND
from core.tasks.queryiter.runs import FINISHED, get_run
from tests.e2e.conftest import wait_for

APP = f"{__name__}:build_app()"
MARK = "async_e2e_mark"
ITEM = "async_e2e_item"
CRON = "e2e-async"


async def _mark(name: str, **values: Any) -> None:
    await asyncio.sleep(0.05)  # a coroutine that is never awaited never gets past here
    entity = db.Entity(db.key(MARK, name))
    entity.update({"pid": os.getpid(), **values})
    db.put(entity)


@callDeferred
async def async_deferred(token: str) -> None:
    await _mark(f"deferred-{token}", token=token)


@PeriodicTask(0, cronName=CRON)
async def async_periodic() -> None:
    await _mark("periodic")


class AsyncTouch(QueryIter):
    maxEntriesPerChunk = 7  # several chunks, each a task of its own

    @classmethod
    async def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        await asyncio.sleep(0)
        entry["touched_by"] = customData["token"]
        db.put(entry)

    @classmethod
    async def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        await _mark(f"finish-{customData['token']}", total=totalCount)


class AsyncProbes(Module):
    @exposed(methods=("POST",))
    def defer(self, token: str) -> str:
        async_deferred(token)
        return "queued"

    @exposed(methods=("POST",))
    def iterate(self, token: str) -> dict[str, Any]:
        return {"run": AsyncTouch.startIterOnQuery(db.Query(ITEM), customData={"token": token})}


def build_app():  # noqa: ANN201 - a gunicorn app factory
    from core import create_app

    return create_app({"asyncprobe": AsyncProbes})


def mark(name: str) -> db.Entity | None:
    return db.get(db.key(MARK, name))


def test_async_deferred_periodic_and_query_iter_targets_run_to_completion_on_gunicorn(make_stack):
    stack = make_stack(app_module=APP)
    items = []
    for i in range(1, 31):
        item = db.Entity(db.key(ITEM, i))
        item["n"] = i
        items.append(item)
    db.put(items)
    token = uuid.uuid4().hex

    assert requests.post(f"{stack.url}/asyncprobe/defer", data={"token": token}, timeout=30).status_code == 200
    started = requests.post(f"{stack.url}/asyncprobe/iterate", data={"token": token}, timeout=30)
    assert started.status_code == 200
    run_id = started.json()["run"]
    path = f"/_tasks/cron/{CRON}"
    ping = requests.get(stack.url + path, headers=sign_cron_ping(stack.settings.tasks_secret, path), timeout=30)
    assert ping.status_code == 200 and ping.json()["tasks"][f"{__name__}.async_periodic"] == "enqueued"

    deferred = wait_for(lambda: mark(f"deferred-{token}"), message="the async deferred function's mark")
    assert deferred["token"] == token and deferred["pid"] in stack.worker_pids()
    wait_for(lambda: mark("periodic"), message="the async periodic task's mark")
    wait_for(lambda: (db.get(db.key(STATE_KIND, f"{__name__}.async_periodic")) or {}).get("runs") == 1,
             message="the periodic run recorded as a success")
    run = wait_for(lambda: (found := get_run(run_id)) is not None and found.status == FINISHED and found,
                   timeout=60, message="the async QueryIter run to finish")
    assert run.processed == 30
    assert {e.get("touched_by") for e in db.Query(ITEM).run()} == {token}
    assert mark(f"finish-{token}")["total"] == 30
    assert "never awaited" not in stack.log_tail("gunicorn", 100_000)
