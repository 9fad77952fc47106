"""A deferred call that cannot run fails at the call, naming the function and the argument; nothing is queued."""
from __future__ import annotations

import datetime
from typing import Literal, Optional, Union

import pytest
from google.cloud import datastore

from core import db
from core.module import Module
from core.tasks import DeferredArgumentError, callDeferred

RAN: list[object] = []


@callDeferred
def add(a, b):
    RAN.append(a + b)


@callDeferred
def charge(user_id: int, amount: float, note: Optional[str] = None, *,  # noqa: UP045 - the typing spelling too
           when: datetime.datetime | None = None, key: db.Key | None = None, ids: list[int] = (),
           extra: dict[str, int] | None = None, either: Union[int, str] = 0,  # noqa: UP007
           flag: bool = False, blob: bytes = b"", day: datetime.date | None = None) -> None:
    RAN.append(user_id)


@callDeferred
def spread(*numbers: int, **labels: str) -> None:
    RAN.append(numbers)


@callDeferred
def choose(mode: Literal["fast", "slow"], item: Module) -> None:
    RAN.append(mode)


class Billing(Module):
    @callDeferred
    def close(self, month: str) -> None:
        RAN.append(month)

    @callDeferred
    @classmethod
    def reopen(cls, month: str) -> None:
        RAN.append(month)


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


@pytest.fixture
def app(make_app):
    return make_app({"billing": Billing})


def refused(call, *args, **kwargs) -> DeferredArgumentError:
    with pytest.raises(DeferredArgumentError) as caught:
        call(*args, **kwargs)
    assert isinstance(caught.value, TypeError)
    return caught.value


@pytest.mark.parametrize("args, kwargs, argument", [
    ((1,), {}, "b"),                       # missing
    ((1, 2, 3), {}, None),                 # one too many
    ((1,), {"b": 2, "c": 3}, "c"),         # unknown keyword
    ((1,), {"a": 2}, "a"),                 # given twice
])
def test_arguments_that_do_not_fit_the_signature_fail_at_the_call(app, task_queue, args, kwargs, argument):
    error = refused(add, *args, **kwargs)
    assert str(error).startswith("cannot defer add: ") and error.function == "add" and error.argument == argument
    assert task_queue.pending == []


@pytest.mark.parametrize("args, kwargs, argument, message", [
    (("x", 1.0), {}, "user_id", "argument 'user_id' is a str, not int"),
    ((1, "1.0"), {}, "amount", "argument 'amount' is a str, not float"),
    ((1, 1.0, 5), {}, "note", "argument 'note' is a int, not "),
    ((1, 1.0), {"when": datetime.date(2026, 1, 1)}, "when", "argument 'when' is a date, not "),
    ((1, 1.0), {"key": "invoice/5"}, "key", "argument 'key' is a str, not "),
    ((1, 1.0), {"ids": (1, 2)}, "ids", "argument 'ids' is a tuple, not list"),
    ((1, 1.0), {"extra": [("a", 1)]}, "extra", "argument 'extra' is a list, not "),
    ((1, 1.0), {"either": 1.5}, "either", "argument 'either' is a float, not "),
    ((1, 1.0), {"flag": 1}, "flag", "argument 'flag' is a int, not bool"),
    ((1, 1.0), {"blob": "text"}, "blob", "argument 'blob' is a str, not bytes"),
])
def test_values_that_do_not_match_simple_hints_fail_at_the_call(app, task_queue, args, kwargs, argument, message):
    error = refused(charge, *args, **kwargs)
    assert str(error).startswith(f"cannot defer charge: {message}")
    assert (error.function, error.argument) == ("charge", argument)
    assert task_queue.pending == []


def test_values_that_match_run(app, task_queue):
    library_key = datastore.Key("invoice", 5, project=db.get_datastore().project)
    charge(1, 2, "n", when=datetime.datetime(2026, 1, 1), key=library_key, ids=[1, "not checked inside"],
           extra={"a": 1}, either="x", flag=True, blob=b"x", day=datetime.datetime(2026, 1, 1))
    charge(True, 1.5, None, key=db.key("invoice", 5))  # a bool is an int, as Python says
    assert len(task_queue.pending) == 2
    task_queue.run_pending()
    assert RAN == [1, True]


def test_star_arguments_are_checked_item_by_item(app, task_queue):
    assert refused(spread, 1, "2").argument == "numbers"
    assert refused(spread, 1, label=3).argument == "labels"
    spread(1, 2, label="x")
    assert len(task_queue.pending) == 1


def test_hints_the_call_cannot_judge_are_left_to_the_run(app, task_queue):
    with app.test_request_context():
        choose("medium", None)  # Literal and a class of the app: the task's own check decides
    assert len(task_queue.pending) == 1


def test_methods_are_checked_without_self_or_cls(app, task_queue):
    billing = app.extensions["core"].modules["billing"]
    error = refused(billing.close, 202610)
    assert (error.function, error.argument) == ("Billing.close", "month")
    assert refused(Billing.reopen, 202610).argument == "month"
    billing.close("2026-10")
    Billing.reopen("2026-10")
    task_queue.run_pending()
    assert RAN == ["2026-10", "2026-10"]


HINTS = [int, str, float, bool, bytes, db.Key, datetime.datetime, datetime.date, datetime.timedelta,
         Optional[int], Union[int, str], Optional[db.Key],  # noqa: UP007, UP045 - the typing spelling too
         int | None, list[int], dict[str, int], tuple[int, ...], set[str], Literal["a"], Module, object]
VALUES = [0, 1, True, 1.5, "x", b"x", None, [1], (1,), {"a": 1}, {"a"}, datetime.datetime(2026, 1, 1),
          datetime.date(2026, 1, 1), datetime.timedelta(1), "a"]


def test_the_call_never_refuses_what_the_task_would_take(app):
    from core import json as tagged_json
    from core.tasks.arguments import _call_site_types, _matches

    values = [*VALUES, db.key("k", 1), datastore.Key("k", 1, project=db.get_datastore().project)]
    for hint in HINTS:
        allowed = _call_site_types(hint)
        for value in values:
            refused_at_call = allowed is not None and not isinstance(value, allowed)
            taken_by_task = _matches(tagged_json.loads(tagged_json.dumps(value)), hint)
            assert not (refused_at_call and taken_by_task), (hint, value)
