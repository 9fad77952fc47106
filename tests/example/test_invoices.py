"""The example's task-queuing view: no poison tasks from outside."""
from __future__ import annotations

import pytest

from core import db
from core.app import runtime_of
from core.tasks.executor import DEAD_LETTER_KIND
from tests.conftest import TaskQueue


@pytest.mark.parametrize("month", ["", "x" * 1600, "2026-13", "2026-1", "２０２６-10", "2026-10\n", "0000-00"])
def test_close_month_refuses_what_is_not_a_month_and_queues_nothing(app, client, month):
    queue = TaskQueue(app)
    assert client.get("/invoices/close_month", query_string={"month": month}).status_code == 400
    assert client.post("/invoices/close_month", data={"month": month}).status_code == 400
    assert queue.pending == []


def test_close_month_refuses_a_large_post_and_queues_nothing(app, client):
    queue = TaskQueue(app)
    assert client.post("/invoices/close_month", data={"month": "x" * 300_000}).status_code in (400, 413)
    assert queue.pending == []


def test_close_month_queues_one_task_for_a_month(app, client):
    queue = TaskQueue(app)
    response = client.post("/invoices/close_month", data={"month": "2026-10"})
    assert response.status_code == 200 and response.json["month"] == "2026-10"
    assert len(queue.pending) == 1


def test_a_signed_recompute_of_a_month_that_is_not_one_is_a_dead_letter(app):
    queue = TaskQueue(app)
    runtime_of(app).modules.get("invoices").recompute_totals("")
    queue.run_pending(raise_errors=False, max_attempts=5)
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["attempts"] == 1 and "month must look like" in letter["error"]
