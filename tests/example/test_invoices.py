"""The example's task-queuing view: no poison tasks from outside."""
from __future__ import annotations

import pytest

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
