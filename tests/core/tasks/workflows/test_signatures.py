"""Signatures: serializable, checked where they are written and again where a step receives a result."""
from __future__ import annotations

import io

import pytest

from core.tasks import DeferredArgumentError, callDeferred
from core.tasks.workflows import Signature, chain, group, signature


@callDeferred
def send_invoice(key: str, *, copies: int = 1) -> str:
    return key


@callDeferred
def summarize(results: list, month: str) -> None:
    return None


def test_a_signature_names_the_target_and_round_trips_through_json():
    sig = send_invoice.s("k1", copies=2, _queue="mail")
    assert sig == Signature(send_invoice.target.name, ("k1",), {"copies": 2}, {"_queue": "mail"})
    assert Signature.from_json(sig.to_json()) == sig
    assert signature(send_invoice, "k1", copies=2, _queue="mail") == sig
    assert repr(sig) == f"{send_invoice.target.name}.s('k1', copies=2)"


def test_a_value_that_cannot_travel_fails_at_the_call_site_naming_function_and_argument():
    with pytest.raises(DeferredArgumentError, match=r"send_invoice.s\(copies=\.\.\.\).*TextIOWrapper") as caught:
        with open(__file__) as handle:
            send_invoice.s("k", copies=handle)
    assert caught.value.argument == "copies=..."
    with pytest.raises(DeferredArgumentError, match=r"s\(args\[0\]\)\[1\]: cannot serialize object of type BytesIO"):
        send_invoice.s(["ok", io.BytesIO()])


def test_arguments_that_do_not_fit_fail_at_the_call_site():
    with pytest.raises(DeferredArgumentError, match="do not fit"):
        send_invoice.s("a", "b")
    with pytest.raises(DeferredArgumentError, match="do not fit"):
        send_invoice.s("a", colour="red")
    with pytest.raises(DeferredArgumentError, match="_eta is not an option"):
        send_invoice.s("a", _eta=None)


def test_composition_checks_the_complete_call_with_the_result_it_receives(app):
    with pytest.raises(DeferredArgumentError, match="missing a required argument"):
        group([send_invoice.s()]).start()  # a member gets no result: key is missing
    with pytest.raises(DeferredArgumentError, match="after the result it receives"):
        group([send_invoice.s("k")]).then(summarize.s()).start()  # month is missing
    with pytest.raises(DeferredArgumentError, match="after the result it receives"):
        chain(send_invoice.s("k"), send_invoice.s("x")).start()  # the result plus "x": one too many
    with pytest.raises(DeferredArgumentError, match="is a int, not str"):
        group([send_invoice.s(5)]).start()


def test_only_deferred_functions_make_signatures():
    with pytest.raises(TypeError, match="not a @callDeferred function"):
        signature(print, "x")
    with pytest.raises(TypeError, match="signatures"):
        group([lambda: None])
    with pytest.raises(ValueError, match="policy"):
        group([send_invoice.s("k")]).then(summarize.s("m"), policy="sometimes")
