"""Signed envelopes of the ``periodic`` and ``startup`` kinds, their fields around the valid shapes.

The runs a cron ping or a version start queues are kinds of their own; a well-signed task of one
whose fields are wrong (a name nobody declared, a naive or missing slot, a claim number that is
not one, a version that is not this one) must end in a 2xx, as a dead letter or a clean run, never
in a 5xx the queue would retry forever.
"""
from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import db
from core import json as tagged_json
from core.app import runtime_of
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.startup import StartupTask

RUNS: list[str] = []


@PeriodicTask(60, cronName="t-kind-fuzz")
def fuzzed_periodic() -> None:
    RUNS.append("periodic")


@StartupTask
def fuzzed_startup() -> None:
    RUNS.append("startup")


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20) | st.integers() | st.sampled_from(["", "x" * 2000]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
slots = st.datetimes(timezones=st.just(datetime.UTC)) | st.datetimes()  # aware, and naive ones


def around(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the valid shape most of the time, often a random JSON value instead."""
    return st.one_of(valid, valid, json_values)


def periodic_payloads() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "periodic": around(st.just(f"{__name__}.fuzzed_periodic")), "instance": around(st.none()),
        "slot": around(slots), "generation": around(st.integers(-2, 3) | st.just(10 ** 400)),
    }, optional={"track": around(st.just(True))})


def startup_payloads(version: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "startup": around(st.just(f"{__name__}.fuzzed_startup")), "version": around(st.just(version)),
    }, optional={"track": around(st.just(True))})


@pytest.fixture
def app(make_app):
    return make_app()


def test_signed_periodic_and_startup_tasks_end_in_2xx_whatever_their_fields(app, client):
    runtime = runtime_of(app)
    outcomes: list = []
    runtime.outcome_listeners.append(outcomes.append)
    version = runtime.settings.app_version
    kinds = st.one_of(st.tuples(st.just("periodic"), periodic_payloads()),
                      st.tuples(st.just("startup"), startup_payloads(version)))

    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(kinds)
    def check(drawn: tuple[str, dict[str, Any]]) -> None:
        kind, payload = drawn
        outcomes.clear()
        body = tagged_json.dumps({"v": 1, "id": "fuzzed-kind", "kind": kind, "queue": "default",
                                  "created": 1_700_000_000.5, "env": {}, "payload": payload}).encode()
        headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", "/_tasks/deferred", body)}
        response = client.post("/_tasks/deferred", data=body, headers=headers)
        assert 200 <= response.status_code < 300, (body[:300], response.status_code, response.text[:300])
        (outcome,) = outcomes
        assert outcome.kind == kind
        if outcome.dead_letter is not None:
            db.delete(outcome.dead_letter)
        assert db.Query(DEAD_LETTER_KIND).keys_only().run() == []

    RUNS.clear()
    check()
    assert {"periodic", "startup"} <= set(RUNS), "the fuzz reaches past the checks to real runs of both kinds"


def test_a_periodic_task_sent_to_the_query_iter_route_is_a_dead_letter(app, client):
    RUNS.clear()
    body = tagged_json.dumps({"v": 1, "id": "misrouted", "kind": "periodic", "queue": "default", "created": 1.0,
                              "payload": {"periodic": f"{__name__}.fuzzed_periodic"}}).encode()
    headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", "/_tasks/queryIter", body)}
    assert client.post("/_tasks/queryIter", data=body, headers=headers).status_code == 200
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["error"].startswith("PayloadError") and "sent to /_tasks/queryIter" in letter["error"]
    assert RUNS == []
