"""Signed envelopes aimed at every target and kind the handler runs: 2xx with a dead letter or a clean run.

The targets are all those of the app's registry (the periodic, startup and callable-task runners
among them) and the ``queryIter`` kind over a real run. Each argument and lifecycle field is
mostly a value of the valid shape (a registered name, a run id that exists) and often a random
JSON value instead, so the fuzz reaches past the first check of each runner. Never a 5xx: the
queue would retry a task that can never succeed. Every dead letter that results must render.
"""
from __future__ import annotations

import datetime
import inspect
import types
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import db
from core import json as tagged_json
from core.app import runtime_of
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.queryiter import api as queryiter
from core.tasks.runtime import TaskRuntime
from example import MODULES, SessionUsers
from example.users import create_user

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=30) | st.integers()
    | st.sampled_from(["", "x" * 2000, "__reserved__", "a/b", "-1"])
    | st.sampled_from([5000, -4400, 20]).map(lambda n: (10 ** abs(n)) * (1 if n > 0 else -1)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


#: The edges that broke runners before: a huge int, empty and over-long text, lists of them.
edges = st.sampled_from([10 ** 5000, "", "x" * 2000, -1, 2 ** 64]).flatmap(lambda v: st.just(v) | st.just([v]))


def around(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the valid shape most of the time, often a random JSON value or an edge instead."""
    return st.one_of(valid, valid, json_values, edges)


def names_of(runtime: TaskRuntime) -> st.SearchStrategy[str]:
    """Names some internal runner looks up: registered targets of every table, the app's version."""
    registry = runtime.registry
    known = sorted({*registry.periodic, *registry.startup, *registry.callable, *registry.query_iters,
                    runtime.settings.app_version or "", "default"})
    for _, spec in registry.periodic.items():
        known.extend(path for path in getattr(spec, "instances", ()) or () if isinstance(path, str))
    return st.sampled_from(sorted(set(known)))


def valid_value(annotation: Any, names: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Values of the shape ``annotation`` asks for (shallowly)."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(valid_value(option, names) for option in typing.get_args(annotation)))
    if annotation is type(None) or annotation is None:
        return st.none()
    if origin is str:
        return names | st.text(max_size=10)
    if origin is int:
        return st.integers(-3, 3)
    if origin is float:
        return st.floats(0, 10)
    if origin is bool:
        return st.booleans()
    if origin is datetime.datetime:
        return st.datetimes(timezones=st.just(datetime.UTC))
    if origin is dict:
        return st.just({}) | st.just({"month": "2026-10", "count": 1})
    if origin is list:
        return st.just([])
    return json_values


@st.composite
def deferred_calls(draw, runtime: TaskRuntime) -> tuple[str, dict[str, Any]]:
    """A ``deferred`` payload for one registered target, its arguments around their signature."""
    names = names_of(runtime)
    # The library's and the example app's own targets; other test modules' targets fail on purpose.
    every = sorted(name for name in runtime.registry.deferred if name.startswith(("core.", "example.")))
    name = draw(st.sampled_from([name for name in every if name.startswith("core.")]) | st.sampled_from(every))
    target = runtime.registry.deferred.get(name)
    try:
        hints = typing.get_type_hints(target.func)
    except Exception:
        hints = {}
    parameters = [p for p in inspect.signature(target.func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "cls")]
    args = [draw(around(valid_value(hints.get(p.name, Any), names))) for p in parameters]
    if args and draw(st.booleans()):
        args = args[:draw(st.integers(0, len(args)))]
    call: dict[str, Any] = {"target": draw(around(st.just(name))), "args": draw(around(st.just(args))),
                            "kwargs": draw(around(st.just({})))}
    if target.kind == "method":
        paths = [runtime.modules.path_of(module) for module in runtime.modules.instances_of(target.owner)]
        call["instance"] = draw(around(st.sampled_from([path for path in paths if path] or ["x"])))
    return name, call


def lifecycle_fields() -> st.SearchStrategy[dict[str, Any]]:
    """The fields the lifecycle, the records and the hooks read from a payload."""
    return st.fixed_dictionaries({}, optional={
        "track": around(st.just(True)), "timeout": around(st.floats(0.1, 60)),
        "tags": around(st.lists(st.text(max_size=5), max_size=3)), "description": around(st.text(max_size=20)),
        "attempt": around(st.integers(-2, 5)), "group": around(st.text(max_size=5)),
    })


@st.composite
def envelopes(draw, runtime: TaskRuntime, run_id: str, iter_id: str) -> tuple[str, bytes]:
    if draw(st.booleans()):
        _, payload = draw(deferred_calls(runtime))
        kind, path = "deferred", "/_tasks/deferred"
    else:
        payload = {"run": draw(around(st.just(run_id))), "class": draw(around(st.just(iter_id) | names_of(runtime))),
                   "gen": draw(around(st.integers(-1, 2))), "step": draw(around(st.integers(-1, 2)))}
        kind, path = "queryIter", "/_tasks/queryIter"
    payload.update(draw(lifecycle_fields()))
    data = {"v": 1, "id": draw(around(st.uuids().map(lambda u: u.hex))), "kind": kind,
            "queue": draw(around(st.just("default"))), "created": draw(around(st.just(1_700_000_000.5))),
            "env": draw(around(st.just({"user": "admin", "language": "en"}))), "payload": payload}
    return path, tagged_json.dumps(data).encode()


@pytest.fixture
def app(make_app):
    return make_app(MODULES, users=SessionUsers())


def test_signed_envelopes_for_every_internal_target_end_in_2xx_and_their_dead_letters_render(app, client):
    create_user("admin", "admin-demo", admin=True)
    runtime = runtime_of(app)
    iter_cls = next(cls for cls in runtime.registry.query_iters.values() if cls is not queryiter.QueryIter)
    run_id = queryiter.start_run(iter_cls, db.Query("_fuzz_nothing"), runtime=runtime)
    outcomes: list = []
    runtime.outcome_listeners.append(outcomes.append)
    admin = app.test_client()
    with admin.session_transaction() as session:
        session["user"] = "admin"

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(envelopes(runtime, run_id, iter_cls.iter_id))
    def check(request: tuple[str, bytes]) -> None:
        path, body = request
        outcomes.clear()
        headers = {SIGNATURE_HEADER: sign_request("test-task-secret", "POST", path, body)}
        response = client.post(path, data=body, headers=headers)
        assert 200 <= response.status_code < 300, (body[:400], response.status_code, response.text[:400])
        (outcome,) = outcomes
        if outcome.dead_letter is None:
            assert outcome.error is None or outcome.message.startswith(("rescheduled", "cancelled")), \
                (body[:400], outcome)
            return
        for page in ("/_tasks/admin", "/_tasks/admin/failed", "/_tasks/admin/failed?format=json"):
            assert admin.get(page).status_code == 200, (page, body[:400])
        assert str(outcome.dead_letter.id) in admin.get("/_tasks/admin/failed").text
        db.delete(outcome.dead_letter)
        assert db.Query(DEAD_LETTER_KIND).keys_only().run() == []

    check()
