"""Signed tasks whose target name or lifecycle fields have a bad shape: 2xx and a dead letter or a clean run.

The minimal cases the internal-target fuzz found: each answered 500 before (the queue would
retry it forever).
"""
from __future__ import annotations

from typing import Any

import pytest

from core import db
from core import json as tagged_json
from core.app import runtime_of
from core.tasks import callDeferred, records
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request

RAN: list[Any] = []
HUGE = 10 ** 5000  # core.json carries it; str() of it raises ValueError


@callDeferred
def note(text: str) -> None:
    RAN.append(text)


@pytest.fixture(autouse=True)
def _reset():
    RAN.clear()


def post(app, client, payload: dict[str, Any], *, kind: str = "deferred", task_id: str = "t1"):
    outcomes: list = []
    runtime_of(app).outcome_listeners.append(outcomes.append)
    path = "/_tasks/deferred" if kind == "deferred" else "/_tasks/queryIter"
    body = tagged_json.dumps({"v": 1, "id": task_id, "kind": kind, "queue": "default", "created": 1_700_000_000.5,
                              "env": {}, "payload": payload}).encode()
    response = client.post(path, data=body, headers={SIGNATURE_HEADER: sign_request("test-task-secret", "POST",
                                                                                   path, body)})
    (outcome,) = outcomes
    return response, outcome


def test_a_target_name_that_is_a_huge_int_is_a_dead_letter(app, client):
    response, outcome = post(app, client, {"target": HUGE, "args": [], "kwargs": {}})
    assert response.status_code == 200, response.text
    assert outcome.dead_letter is not None and "names no target" in str(outcome.error)


@pytest.mark.parametrize("field", ["tags", "description", "group"])
def test_a_tracked_task_with_a_huge_int_in_a_record_field_runs(app, client, field):
    value = [HUGE] if field == "tags" else HUGE
    response, outcome = post(app, client, {"target": note.target.name, "args": ["hi"], "kwargs": {},
                                           "track": True, field: value})
    assert response.status_code == 200, response.text
    assert outcome.ran and RAN == ["hi"]
    assert records.get("t1")[field] == ([] if field == "tags" else None)


def test_a_tracked_task_with_over_long_tags_group_and_target_keeps_them_cut(app, client):
    long = "x" * 2000
    response, outcome = post(app, client, {"target": note.target.name, "args": ["hi"], "kwargs": {},
                                           "track": True, "tags": ["ok", long], "group": long})
    assert response.status_code == 200, response.text
    assert outcome.ran
    record = records.get("t1")
    assert record["tags"][0] == "ok" and 0 < len(record["tags"][1]) <= records.MAX_INDEXED_CHARS
    assert 0 < len(record["group"]) <= records.MAX_INDEXED_CHARS


def test_a_tracked_query_step_naming_an_over_long_class_is_a_dead_letter(app, client):
    response, outcome = post(app, client, {"run": "r1", "class": "x" * 2000, "gen": 0, "step": 0, "track": True},
                             kind="queryIter")
    assert response.status_code == 200, response.text
    assert outcome.dead_letter is not None
    assert len(records.get("t1")["target"]) <= records.MAX_INDEXED_CHARS
    assert db.get(outcome.dead_letter) is not None


@pytest.mark.parametrize("attempt", [2 ** 64 + 1, HUGE], ids=["past-64-bits", "huge"])
def test_a_tracked_task_with_an_attempt_count_no_record_can_store_runs_as_a_first_attempt(app, client, attempt):
    response, outcome = post(app, client, {"target": note.target.name, "args": ["hi"], "kwargs": {},
                                           "track": True, "attempt": attempt})
    assert response.status_code == 200, response.text
    assert outcome.ran and RAN == ["hi"]
    assert records.get("t1")["attempts"] == 1
