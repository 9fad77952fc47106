"""Queue controls of the app, in process: the in-process queue honours a pause as the others do."""
from __future__ import annotations

import pytest

from core.tasks import callDeferred, queue_admin
from core.tasks.queues import UnknownQueue
from core.tasks.runtime import get_runtime

RUNS: list[str] = []


@callDeferred(queue="background")
def chore(label: str) -> None:
    RUNS.append(label)


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def test_a_paused_queue_runs_nothing_until_resumed(app, task_queue) -> None:
    runtime = get_runtime()
    queue_admin.pause(runtime, "background")
    chore("a")
    chore("b")
    task_queue.run_pending()
    assert RUNS == [] and len(task_queue.pending) == 2
    assert [s.paused for s in queue_admin.statuses(runtime) if s.name == "background"] == [True]
    listings, cursor = queue_admin.list_tasks(runtime, "background")
    assert [item.target for item in listings] == [f"{__name__}.chore"] * 2 and cursor is None
    queue_admin.resume(runtime, "background")
    task_queue.run_pending()
    assert RUNS == ["a", "b"]


def test_purge_and_run_now(app, task_queue) -> None:
    runtime = get_runtime()
    chore("later", _countdown=3600)
    chore("gone")
    [later, _] = sorted(queue_admin.list_tasks(runtime, "background")[0],
                        key=lambda item: item.task.schedule_time is None)
    assert queue_admin.purge(runtime, "default") == 0
    assert queue_admin.run_now(runtime, "background", later.task.name) is True
    task_queue.run_pending()
    assert sorted(RUNS) == ["gone", "later"]
    chore("purged")
    assert queue_admin.purge(runtime, "background") == 1
    task_queue.run_pending()
    assert "purged" not in RUNS


def test_an_unknown_queue_is_refused_naming_it_and_the_file(app) -> None:
    with pytest.raises(UnknownQueue, match=r"unknown queue 'reprots': .*queue.yaml .*defines only .*default"):
        queue_admin.pause(get_runtime(), "reprots")
