"""Flow control on the production transport: gunicorn → Cloud Tasks (gcloud-tasks-emulator) → gunicorn.

Expiry, unique tasks, debounce and rate limits work the same as on the local queue: each option
travels in the signed payload and is decided by the app's own middleware and Datastore, whatever
queue pushes the task. gunicorn serves :func:`probe_app`, whose tasks record a run entity each.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from core import db
from core.config import Settings
from core.devserver.ports import free_port
from core.module import Module, exposed
from core.tasks import callDeferred
from core.tasks.records import RECORD_KIND
from core.tasks.transports.cloudtasks import CloudTasksTransport
from tests.e2e.conftest import wait_for
from tests.services.tasks_emulator import start_tasks_emulator

PROJECT, LOCATION = "local-project", "europe-west1"
PROBE_APP = f"{__name__}:probe_app()"
RUN_KIND = "ct_flow_run"


def _ran(token: str, value: int) -> None:
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "value": value, "at": time.time()})
    db.put(run)


@callDeferred(track=True, expires=2)
def short_lived(token: str, value: int) -> None:
    _ran(token, value)


@callDeferred(unique=True)
def once_per_key(token: str, value: int) -> None:
    time.sleep(0.5)
    _ran(token, value)


@callDeferred(debounce=1.5, debounce_key="ct-{token}")
def last_call(token: str, value: int) -> None:
    _ran(token, value)


@callDeferred(rate_limit="5/s", rate_key="ct-{token}")
def limited(token: str, value: int) -> None:
    _ran(token, value)


TARGETS = {"short_lived": short_lived, "once_per_key": once_per_key, "last_call": last_call, "limited": limited}


class CloudTasksFlowProbes(Module):
    @exposed(methods=("POST",))
    def call(self, target: str, token: str, value: str = "0") -> dict[str, Any]:
        return {"id": TARGETS[target](token, int(value)).id}


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probes."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "ctflow": CloudTasksFlowProbes}, users=SessionUsers(), languages=("en", "de"))


def _call(stack: Any, target: str, token: str, value: int = 0) -> str:
    response = requests.post(f"{stack.url}/ctflow/call", data={"target": target, "token": token, "value": str(value)},
                             timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _runs(token: str) -> list[db.Entity]:
    return db.Query(RUN_KIND).filter("token =", token).run()


def test_expiry_unique_debounce_and_rate_limits_through_cloud_tasks(make_stack):
    port = free_port()
    with start_tasks_emulator(target_port=port, queues=["default"], max_retries=5, project=PROJECT,
                              location=LOCATION) as emulator:
        stack = make_stack(port=port, app_module=PROBE_APP,
                           extra_env={"TASKS_BACKEND": "cloudtasks", "TASKS_EMULATOR": emulator.host,
                                      "GOOGLE_CLOUD_PROJECT": PROJECT, "TASKS_REGION": LOCATION})
        queues = CloudTasksTransport(Settings(project=PROJECT, tasks_region=LOCATION, tasks_backend="cloudtasks",
                                              tasks_emulator_host=emulator.host))

        # Expiry: the queue is paused past the tasks' expiry; resumed, it pushes them and none runs.
        expired = uuid.uuid4().hex
        queues.pause_queue("default")
        ids = [_call(stack, "short_lived", expired, value) for value in range(5)]
        time.sleep(2.5)
        queues.resume_queue("default")
        wait_for(lambda: all(record is not None and record["state"] == "expired"
                             for record in db.get([db.key(RECORD_KIND, i) for i in ids])),
                 timeout=60, message="the late tasks to end expired")
        assert _runs(expired) == []

        # Unique: five calls with the same arguments while the first is pending or running: one run.
        unique = uuid.uuid4().hex
        first = {_call(stack, "once_per_key", unique, 7) for _ in range(5)}
        assert len(first) == 1
        wait_for(lambda: len(_runs(unique)) == 1, timeout=60, message="the unique task's run")

        # Debounce: ten calls within the window give one run, with the last call's arguments.
        debounced = uuid.uuid4().hex
        for value in range(10):
            _call(stack, "last_call", debounced, value)
        wait_for(lambda: _runs(debounced), timeout=60, message="the debounced run")
        time.sleep(2.0)
        assert [run["value"] for run in _runs(debounced)] == [9]

        # Rate limit: 20 tasks at 5/s never start more than 5 in any second, and all run.
        limited = uuid.uuid4().hex
        for value in range(20):
            _call(stack, "limited", limited, value)
        wait_for(lambda: len(_runs(limited)) >= 20, timeout=90, message="every rate-limited task")
        starts = sorted(run["at"] for run in _runs(limited))
        assert max(sum(1 for t in starts if start <= t < start + 1.0) for start in starts) <= 5
        queues.close()
