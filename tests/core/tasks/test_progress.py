"""Progress reported from inside a task: kept on its record at a bounded rate, read from its handle."""
from __future__ import annotations

import pytest

from core.tasks import TaskHandle, callDeferred, report_progress

WRITTEN: list[bool] = []


@callDeferred(track=True)
def crunch(count: int) -> int:
    for done in range(count + 1):
        WRITTEN.append(report_progress(done, count, note=f"item {done}"))
    return count


@callDeferred
def untracked_crunch() -> None:
    WRITTEN.append(report_progress(1, 2))


@pytest.fixture(autouse=True)
def _clear():
    WRITTEN.clear()


def test_a_hundred_reports_are_stored_at_a_bounded_rate_and_read_from_the_handle(app, task_queue) -> None:
    handle = crunch(100)
    assert handle.progress() is None
    task_queue.run_pending()
    # The first report and the one reaching the total are written; the 99 between come within a second.
    assert WRITTEN[0] is True and WRITTEN[-1] is True and WRITTEN.count(True) <= 4
    progress = TaskHandle.fetch(handle.id).progress()
    assert (progress.done, progress.total, progress.note, progress.fraction) == (100, 100, "item 100", 1.0)
    assert progress.eta_seconds in (0.0, None)
    assert handle.result() == 100 and handle.status().state.value == "succeeded"  # transitions keep it


def test_an_untracked_task_reports_nothing_stored(app, task_queue) -> None:
    untracked_crunch()
    task_queue.run_pending()
    assert WRITTEN == [False]


def test_bad_reports_are_refused_and_outside_a_task_it_says_so(app) -> None:
    with pytest.raises(RuntimeError, match="inside a running task"):
        report_progress(1, 2)
    with pytest.raises(ValueError, match="done=...\\) must be a count"):
        report_progress(-1)
    with pytest.raises(ValueError, match="total=...\\) must be a count"):
        report_progress(1, total="ten")  # type: ignore[arg-type]
