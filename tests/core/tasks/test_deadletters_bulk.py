"""Dead letters in bulk: selected by target, queue, error type and age; retried or discarded in
batches, each its own transaction, so a run stopped part-way is finished by running it again."""
from __future__ import annotations

import datetime

import pytest

from core import db
from core.tasks import PermanentTaskFailure, callDeferred, deadletters
from core.tasks.deadletters import LetterFilter
from core.tasks.runtime import get_runtime

BROKEN = {"mail": True}
RUNS: list[tuple[str, int]] = []


@pytest.fixture(autouse=True)
def _reset():
    RUNS.clear()
    BROKEN["mail"] = True


@callDeferred
def send_mail(index: int) -> None:
    if BROKEN["mail"]:
        raise PermanentTaskFailure("the mail partner is down")
    RUNS.append(("mail", index))


@callDeferred(queue="background", max_attempts=1)
def export(index: int) -> None:
    raise ValueError("bad export")


def _letters() -> list[db.Entity]:
    return list(db.Query(deadletters.DEAD_LETTER_KIND).iter())


def _fail_all(task_queue, mails: int, exports: int) -> None:
    before = len(_letters())
    for index in range(mails):
        send_mail(index)
    for index in range(exports):
        export(index)
    task_queue.run_pending(raise_errors=False)
    assert len(_letters()) == before + mails + exports


def test_filters_select_by_target_queue_error_type_and_age(app, task_queue) -> None:
    _fail_all(task_queue, mails=3, exports=0)
    task_queue.advance(3600)
    _fail_all(task_queue, mails=0, exports=2)
    mail = f"{__name__}.send_mail"

    def selected(**fields) -> int:
        return sum(1 for _ in deadletters.matching(LetterFilter(**fields)))

    assert selected() == 5
    assert selected(target=mail) == 3 and selected(queue="background") == 2
    assert selected(error_type="PermanentTaskFailure") == 3 and selected(error_type="ValueError") == 2
    assert selected(older_than=datetime.timedelta(minutes=30)) == 3        # the test clock's hour
    assert selected(target=mail, queue="background") == 0
    assert LetterFilter(target=mail, older_than=datetime.timedelta(hours=2)).describe() == \
        f"target={mail}, older_than=2:00:00"


def test_a_bulk_retry_stopped_part_way_finishes_when_run_again_and_sends_none_twice(app, task_queue) -> None:
    _fail_all(task_queue, mails=20, exports=2)
    BROKEN["mail"] = False
    runtime = get_runtime()
    selection = LetterFilter(target=f"{__name__}.send_mail")
    seen: list[int] = []
    first = deadletters.bulk(runtime, "retry", selection, batch_size=4, limit=12, progress=seen.append)
    assert first.done == 12 and seen == [4, 4, 4]                  # stopped after three batches
    second = deadletters.bulk(runtime, "retry", selection)
    assert second.done == 8
    task_queue.run_pending()
    assert sorted(index for _, index in RUNS) == list(range(20))    # every one ran, none twice
    assert [letter["target"] for letter in _letters()] == [f"{__name__}.export"] * 2


def test_a_letter_that_cannot_be_sent_again_does_not_hold_back_its_batch(app, task_queue) -> None:
    _fail_all(task_queue, mails=5, exports=0)
    BROKEN["mail"] = False
    [stuck, *_] = _letters()
    stuck["payload_truncated"] = True
    db.put(stuck)
    result = deadletters.bulk(get_runtime(), "retry", LetterFilter(), batch_size=5)
    assert result.done == 4 and len(result.refused) == 1 and "too large" in result.refused[0]
    task_queue.run_pending()
    assert len(RUNS) == 4 and len(_letters()) == 1


def test_a_bulk_discard_deletes_only_what_is_selected(app, task_queue) -> None:
    _fail_all(task_queue, mails=3, exports=4)
    result = deadletters.bulk(get_runtime(), "discard", LetterFilter(error_type="ValueError"), batch_size=3)
    assert result.done == 4
    assert {letter["target"] for letter in _letters()} == {f"{__name__}.send_mail"}
    with pytest.raises(ValueError, match="batch_size must be from 1 to 8"):
        deadletters.bulk(get_runtime(), "discard", LetterFilter(), batch_size=50)
