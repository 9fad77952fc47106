"""The outbox sweep: entries that keep failing back off and never block the rest; old ones become dead letters."""
from __future__ import annotations

import dataclasses
import datetime

from core import db
from core.tasks import callDeferred, deadletters, outbox
from core.tasks.periodic.kind import sweep_outbox_task
from core.tasks.runtime import get_runtime

CALLS: list[str] = []


@callDeferred
def outbox_probe(label: str) -> None:
    CALLS.append(label)


def _request_of(task_queue, label: str):
    """The request a deferred call of ``outbox_probe(label)`` sends, taken off the queue before it runs."""
    outbox_probe(label)
    (queued,) = task_queue.pending
    task_queue.transport.pending.clear()
    return queued.request


def _park(request, queue: str | None = None) -> None:
    """Leave ``request`` in the outbox as a crashed process would (one entry each)."""
    outbox._write_outbox([dataclasses.replace(request, queue=queue or request.queue, name=None)])


def test_failing_entries_do_not_block_a_good_one_behind_them(app, task_queue):
    CALLS.clear()
    bad = _request_of(task_queue, "bad")
    for _ in range(101):  # a queue the transport refuses (unknown on Cloud Tasks, say)
        _park(bad, queue="gone")
    _park(_request_of(task_queue, "good"))
    runtime = get_runtime()

    report = outbox.sweep(runtime, older_than=datetime.timedelta(0))
    assert report == outbox.OutboxSweep(sent=1, retried_later=101, given_up=0)
    task_queue.run_pending()
    assert CALLS == ["good"]
    assert outbox.outbox_size() == 101

    # Tried again only once due: at once nothing is taken, and every failure counted one attempt.
    assert outbox.sweep(runtime, older_than=datetime.timedelta(0)) == outbox.OutboxSweep()
    attempts = {e["attempts"] for e in db.Query(outbox.OUTBOX_KIND).run()}
    assert attempts == {1}


def test_an_entry_that_can_never_be_sent_becomes_a_dead_letter_after_a_day(app, task_queue):
    CALLS.clear()
    _park(_request_of(task_queue, "doomed"), queue="gone")
    runtime = get_runtime()
    assert deadletters.count() == 0

    task_queue.advance(60)
    sweep_outbox_task()
    assert outbox.outbox_size() == 1 and deadletters.count() == 0, "kept for a later try"

    for _ in range(3):  # a few hours: backing off, still kept
        task_queue.advance(3600)
        outbox.sweep(runtime, give_up=deadletters.record_unsent)
    assert outbox.outbox_size() == 1 and deadletters.count() == 0
    (entry,) = db.Query(outbox.OUTBOX_KIND).run()
    assert entry["attempts"] >= 2 and "gone" in entry["last_error"]

    task_queue.advance(24 * 3600)
    sweep_outbox_task()
    assert outbox.outbox_size() == 0
    (letter,) = deadletters.latest(5)
    assert letter["queue"] == "gone" and "never queued" in letter["error"]
    assert letter["target"] and letter["target"].endswith("outbox_probe")
    assert CALLS == []
