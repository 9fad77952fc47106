"""A periodic task paused at run time: no cron ping and no "run now" runs it until it is resumed."""
from __future__ import annotations

import datetime

import pytest

from core.tasks import PeriodicTask
from core.tasks.errors import NotFound
from core.tasks.periodic import controls
from core.tasks.periodic.kind import periodic_overview
from core.tasks.runtime import get_runtime

RUNS: list[str] = []


@PeriodicTask(datetime.timedelta(minutes=5), cronName="pausable")
def every_five_minutes() -> None:
    RUNS.append("ran")


NAME = f"{__name__}.every_five_minutes"


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def test_pings_and_run_now_leave_a_paused_task_alone_until_it_is_resumed(app, task_queue) -> None:
    runtime = get_runtime()
    assert controls.pause(runtime, NAME, by="ops") is True
    assert controls.pause(runtime, NAME) is False                       # already so
    for _ in range(5):
        response = task_queue.ping_cron("pausable")
        assert response.get_json()["tasks"][NAME] == "paused"
        task_queue.advance(360)
    assert RUNS == []
    assert controls.run_now(runtime, NAME) == controls.PAUSED
    [row] = [row for row in periodic_overview(runtime) if row["name"] == NAME]
    assert row["paused"] is True and row["paused_at"] is not None

    assert controls.resume(runtime, NAME) is True
    assert task_queue.ping_cron("pausable").get_json()["tasks"][NAME] == "enqueued"   # its slot passed meanwhile
    assert RUNS == ["ran"]


def test_an_unknown_task_is_refused(app) -> None:
    with pytest.raises(NotFound, match="there is no periodic task 'nope'"):
        controls.pause(get_runtime(), "nope")
