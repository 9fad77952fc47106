"""Random JSON in every field of a correctly signed envelope: 2xx with a dead letter or a clean run.

Never a 5xx (the queue would retry a task that can never succeed), and the dashboard renders
every dead letter that results. Targets are a permissive and a typed test function plus names
nobody registered; the example count is bounded so the test stays fast in CI.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import db
from core import json as tagged_json
from core.app import runtime_of
from core.tasks import callDeferred
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from example import MODULES, SessionUsers
from example.users import create_user

RAN: list[tuple] = []


@callDeferred
def accept_anything(*args: Any, **kwargs: Any) -> None:
    RAN.append((args, kwargs))


@callDeferred
def typed(month: str, count: int = 1, *, note: str | None = None) -> None:
    RAN.append((month, count, note))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=30)
    | st.integers() | st.sampled_from([5000, -4400, 20]).map(lambda n: (10 ** abs(n)) * (1 if n > 0 else -1)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def field(valid: Any) -> st.SearchStrategy[Any]:
    """Mostly the valid value, often a random JSON value instead."""
    return st.one_of(st.just(valid), json_values)


@st.composite
def envelopes(draw) -> tuple[str, bytes]:
    target = draw(st.one_of(st.sampled_from([accept_anything.target.name, typed.target.name]),
                            st.text(max_size=20), json_values))
    payload = draw(st.one_of(
        st.fixed_dictionaries({"target": st.just(target), "args": field(["2026-10"]), "kwargs": field({})},
                              optional={"instance": json_values}),
        st.fixed_dictionaries({"run": field("r1"), "class": field("x.Y"), "gen": field(0), "step": field(0)}),
        json_values,
    ))
    data = {"v": draw(field(1)), "id": draw(field("task-1")), "kind": draw(field("deferred") | field("queryIter")),
            "queue": draw(field("default")), "created": draw(field(1_700_000_000.5)),
            "env": draw(field({"user": "admin", "language": "en"})), "payload": payload}
    if draw(st.booleans()):
        data["ref"] = draw(st.fixed_dictionaries({"id": field("task-1"), "chunks": field(1), "sha256": field("00")}))
    for name in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        del data[name]
    path = draw(st.sampled_from(["/_tasks/deferred", "/_tasks/queryIter"]))
    return path, tagged_json.dumps(data).encode()


@pytest.fixture
def app(make_app):
    return make_app(MODULES, users=SessionUsers())


def test_signed_envelopes_with_random_fields_end_in_2xx_and_their_dead_letters_render(app, client):
    create_user("admin", "admin-demo", admin=True)
    outcomes: list = []
    runtime_of(app).outcome_listeners.append(outcomes.append)
    admin = app.test_client()
    with admin.session_transaction() as session:
        session["user"] = "admin"

    @settings(max_examples=50, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(envelopes())
    def check(request: tuple[str, bytes]) -> None:
        path, body = request
        outcomes.clear()
        RAN.clear()
        headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", path, body)}
        response = client.post(path, data=body, headers=headers)
        assert 200 <= response.status_code < 300, (body[:300], response.status_code, response.text)
        (outcome,) = outcomes
        if outcome.dead_letter is None:
            assert outcome.error is None and (RAN or outcome.kind == "queryIter"), (body[:300], outcome)
            return
        for page in ("/_tasks/admin", "/_tasks/admin/failed", "/_tasks/admin/failed?format=json"):
            shown = admin.get(page)
            assert shown.status_code == 200, (page, body[:300])
        assert str(outcome.dead_letter.id) in admin.get("/_tasks/admin/failed").text
        db.delete(outcome.dead_letter)
        assert db.Query(DEAD_LETTER_KIND).keys_only().run() == []

    check()
