"""Well-signed but malformed task envelopes: each is a 2xx plus a dead letter, never a 5xx."""
from __future__ import annotations

import json

import pytest

from core import db
from core.tasks import callDeferred
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.security import SIGNATURE_HEADER, sign_request

CALLS: list[tuple] = []


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()


@callDeferred
def take(month: str, count: int = 1) -> None:
    CALLS.append((month, count))


@pytest.fixture
def target():
    return take.target


def envelope(target: str = "x", **fields: object) -> bytes:
    base = {"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0,
            "payload": {"target": target, "args": ["2026-10"], "kwargs": {}}}
    base.update(fields)
    return json.dumps(base).encode()


def post(client, body: bytes, path: str = "/_tasks/deferred"):
    headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", path, body)}
    return client.post(path, data=body, headers=headers)


def letters() -> list[str]:
    return [letter["error"] for letter in db.Query(DEAD_LETTER_KIND).run()]


@pytest.mark.parametrize("body", [
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 1' + b"0" * 400 + b', "payload": {}}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0, '
    b'"ref": {"id": "p", "chunks": 1e999, "sha256": "00"}}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0, "env": [1], "payload": {}}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0, "payload": [1, 2]}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0, "env": {"user": {"a": 1}}, '
    b'"payload": {}}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": 7, "created": 0, "payload": {}}',
    b'{"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": NaN, "payload": {}}',
], ids=["huge-created", "infinite-chunks", "env-list", "payload-list", "user-object", "queue-int", "nan-created"])
def test_malformed_envelope_fields_are_dead_letters(client, body):
    response = post(client, body)
    assert response.status_code == 200, response.text
    (error,) = letters()
    assert error.startswith("PayloadError")


def test_arguments_that_do_not_fit_the_target_are_a_dead_letter(client, target):
    for payload in ({"target": target.name, "args": [], "kwargs": {}},
                    {"target": target.name, "args": ["2026-10"], "kwargs": {"nope": 1}},
                    {"target": target.name, "args": ["2026-10", 1, 2], "kwargs": {}},
                    {"target": target.name, "args": [5], "kwargs": {}},
                    {"target": target.name, "args": ["2026-10"], "kwargs": {"count": "many"}}):
        assert post(client, envelope(payload=payload)).status_code == 200
    assert len(letters()) == 5 and all(e.startswith("PayloadError") for e in letters())
    assert CALLS == []
    assert post(client, envelope(payload={"target": target.name, "args": ["2026-10"],
                                          "kwargs": {"count": 2}})).status_code == 200
    assert CALLS == [("2026-10", 2)]
