"""A debounced task end to end: 30 calls within a 2 s debounce window, made by requests that both
gunicorn workers serve, give one run with the last call's arguments (pushed by the local queue)."""
from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import requests

from core import db
from core.module import Module, exposed
from core.tasks import callDeferred
from tests.e2e.conftest import wait_for

PROBE_APP = f"{__name__}:probe_app()"
RUN_KIND = "debounce_run"
WINDOW = datetime.timedelta(seconds=2)


@callDeferred(debounce=WINDOW, debounce_key="doc-{token}")
def rebuild(token: str, edit: int) -> None:
    run = db.Entity(db.key(RUN_KIND, uuid.uuid4().hex))
    run.update({"token": token, "edit": edit})
    db.put(run)


class DebounceProbes(Module):
    @exposed(methods=("POST",))
    def edit(self, token: str, edit: str) -> str:
        rebuild(token, int(edit))
        return "queued"


def probe_app() -> Any:
    """gunicorn's app factory: the example app plus the probe."""
    from core import create_app
    from example import MODULES, SessionUsers

    return create_app({**MODULES, "debounceprobe": DebounceProbes}, users=SessionUsers(), languages=("en", "de"))


def test_thirty_calls_within_the_window_on_two_workers_give_one_run_with_the_last_arguments(make_stack):
    stack = make_stack(app_module=PROBE_APP)
    token = uuid.uuid4().hex
    gaps = []
    last = time.monotonic()
    for edit in range(30):
        response = requests.post(f"{stack.url}/debounceprobe/edit", data={"token": token, "edit": str(edit)},
                                 timeout=30)  # a new connection each: both workers take calls
        assert response.status_code == 200, response.text
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert max(gaps[1:]) < WINDOW.total_seconds(), "each call came within the window of the one before"

    def runs() -> list[db.Entity]:
        return db.Query(RUN_KIND).filter("token =", token).run()

    wait_for(runs, timeout=60, message="the debounced run")
    time.sleep(WINDOW.total_seconds() * 2)  # long enough for any other call's task to have come due
    assert [run["edit"] for run in runs()] == [29], "one run, with the last call's arguments"
