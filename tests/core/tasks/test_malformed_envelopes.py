"""Well-signed but malformed task envelopes: each is a 2xx plus a dead letter, never a 5xx."""
from __future__ import annotations

import hashlib
import json

import pytest

from core import db
from core.tasks import callDeferred, executor
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND

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


def test_a_dead_letter_too_large_to_store_whole_is_kept_truncated_with_size_and_digest(make_app, settings):
    client = make_app(settings=settings.replace(max_request_bytes=6_000_000)).test_client()
    body = b'{"v": 1, "id": "big", "kind": "deferred", "queue": "default", "created": 0, "payload": ' \
           + b'{"target": "no.such.task", "args": ["' + b"x" * 5_000_000 + b'"], "kwargs": {}}}'
    assert post(client, body).status_code == 200
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["payload_size"] == len(body) and letter["payload_truncated"] is True
    assert letter["payload_sha256"] == hashlib.sha256(body).hexdigest()
    assert body.startswith(bytes(letter["payload"])) and len(letter["payload"]) < len(body)
    assert letter["error"].startswith("TaskNotFound") and letter["task_id"] == "big"


def test_a_dead_letter_that_cannot_be_stored_is_not_acknowledged(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Datastore is unavailable")

    monkeypatch.setattr(executor, "record_dead_letter", refuse)
    response = post(client, envelope(target="no.such.task"))
    assert response.status_code == 500  # delivered again later, when the dead letter can be stored
