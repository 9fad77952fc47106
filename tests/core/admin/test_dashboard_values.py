"""The dashboard renders every stored value, however odd: one dead letter must not take it down."""
from __future__ import annotations

import pytest

from core import db
from core import json as tagged_json
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from example import MODULES, SessionUsers
from tests.example.test_users import sign_in


@pytest.fixture
def app(make_app):
    return make_app(MODULES, users=SessionUsers())


@pytest.fixture
def admin(client):
    assert sign_in(client, "admin", "admin-demo").status_code == 303  # the sign-in page creates the demo users
    return client


def dead_letter_of(client, payload: object) -> None:
    body = tagged_json.dumps({"v": 1, "id": "t1", "kind": "deferred", "queue": "default", "created": 0,
                              "payload": payload}).encode()
    headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", "/_tasks/deferred", body)}
    assert client.post("/_tasks/deferred", data=body, headers=headers).status_code == 200


@pytest.mark.parametrize("payload", [
    {"target": "no.such.task", "args": [10 ** 5000], "kwargs": {"n": -(10 ** 4400)}},
    {"target": "no.such.task", "args": "not a list", "kwargs": ["not", "a", "dict"]},
    {"target": "no.such.task", "args": [{"deep": [[[[10 ** 4301]]]]}], "kwargs": {}},
], ids=["huge-ints", "wrong-shapes", "nested-huge-int"])
def test_dead_letters_with_odd_values_render(admin, payload):
    dead_letter_of(admin, payload)
    assert db.Query(DEAD_LETTER_KIND).run()
    for path in ("/_tasks/admin", "/_tasks/admin/failed", "/_tasks/admin/failed?format=json"):
        response = admin.get(path)
        assert response.status_code == 200, path
    assert "no.such.task" in admin.get("/_tasks/admin/failed").text
