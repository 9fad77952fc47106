"""The Groups and chains page of the dashboard, through the Flask client on the emulator."""
from __future__ import annotations

import pytest

from core.admin import TaskAdmin
from core.tasks import PermanentTaskFailure, callDeferred
from core.tasks.workflows import chain, group
from tests.core.admin.test_views import Users, client_as


@callDeferred
def double(n: int) -> int:
    if n < 0:
        raise PermanentTaskFailure(f"{n} is negative")
    return 2 * n


@callDeferred
def total(results: list) -> int:
    return sum(results)


@pytest.fixture
def app(make_app):
    return make_app({"_tasks/admin": TaskAdmin}, users=Users())


def rows(client, query: str = "") -> list[dict]:
    response = client.get(f"/_tasks/admin/workflows?format=json{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["workflows"]


def test_groups_and_chains_are_listed_newest_first_with_their_progress(app, task_queue):
    ann = client_as(app, "ann")
    good = group(double.s(n) for n in range(5)).then(total.s()).start()
    bad = chain(double.s(1), double.s(), total.s()).start()
    listed = rows(ann)
    assert [r["id"] for r in listed] == [bad.id, good.id]
    assert [(r["state"], r["done"], r["failed"], r["total"]) for r in listed] == [("running", 0, 0, 3),
                                                                                   ("running", 0, 0, 5)]
    task_queue.run_pending(raise_errors=False)
    by_id = {r["id"]: r for r in rows(ann)}
    assert (by_id[good.id]["state"], by_id[good.id]["done"], by_id[good.id]["total"]) == ("succeeded", 5, 5)
    assert by_id[good.id]["policy"] == "all_succeeded" and by_id[good.id]["callback_task"]
    # double(2) -> 4 gives total() an int, not a list: a bad payload, so the chain fails at step 2.
    assert (by_id[bad.id]["state"], by_id[bad.id]["done"], by_id[bad.id]["failed"]) == ("failed", 2, 1)
    assert by_id[bad.id]["failed_step"] == 2 and "step 2 failed" in by_id[bad.id]["error"]
    assert [r["id"] for r in rows(ann, "&kind=group")] == [good.id]
    assert [r["id"] for r in rows(ann, "&kind=chain")] == [bad.id]
    html = ann.get("/_tasks/admin/workflows").get_data(as_text=True)
    assert f'data-workflow="{good.id}"' in html and "Groups and chains" in html
    assert "double → double → total" in html


def test_the_page_is_for_admins_and_refuses_unknown_kinds(app):
    assert client_as(app, None).get("/_tasks/admin/workflows").status_code == 401
    assert client_as(app, "bob").get("/_tasks/admin/workflows").status_code == 403
    assert client_as(app, "ann").get("/_tasks/admin/workflows?kind=%00x").status_code == 400
    empty = client_as(app, "ann").get("/_tasks/admin/workflows").get_data(as_text=True)
    assert "No group or chain has been started yet." in empty
