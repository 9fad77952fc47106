"""The call check before a deferred target runs: the fast binding agrees with ``Signature.bind``."""
from __future__ import annotations

import inspect

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.tasks.arguments import _read_shape, check_call
from core.tasks.errors import PayloadError

NAMES = ["a", "b", "c", "d", "e"]


@st.composite
def signatures(draw):
    """Positional-or-keyword parameters, maybe ``*rest``, keyword-only ones, maybe ``**more``."""
    count = draw(st.integers(0, len(NAMES)))
    keyword_only = draw(st.integers(0, count))
    parameters, defaulted = [], False
    for i, name in enumerate(NAMES[:count]):
        kind = inspect.Parameter.KEYWORD_ONLY if i >= count - keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        if kind is inspect.Parameter.KEYWORD_ONLY:
            default = draw(st.sampled_from([inspect.Parameter.empty, None]))
        else:  # after a default, every positional one needs one too
            defaulted = defaulted or draw(st.booleans())
            default = None if defaulted else inspect.Parameter.empty
        parameters.append(inspect.Parameter(name, kind, default=default))
    if draw(st.booleans()):
        parameters.insert(count - keyword_only, inspect.Parameter("rest", inspect.Parameter.VAR_POSITIONAL))
    if draw(st.booleans()):
        parameters.append(inspect.Parameter("more", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def function_of(signature: inspect.Signature):
    def target(*args, **kwargs):
        return None

    target.__signature__ = signature
    return target


TWO = inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in "ab"])


@given(signatures(), st.integers(0, 7), st.lists(st.sampled_from(NAMES + ["zz", "rest"]), unique=True, max_size=5))
@example(TWO, 0, ["b", "a"])
@example(inspect.Signature([inspect.Parameter("rest", inspect.Parameter.VAR_POSITIONAL),
                            inspect.Parameter("more", inspect.Parameter.VAR_KEYWORD)]), 1, ["a", "rest"])
def test_the_fast_binding_agrees_with_signature_bind(signature, positional, keywords):
    shape = _read_shape(function_of(signature))
    assert shape.names is not None
    args = list(range(positional))
    kwargs = {name: name for name in keywords}
    try:
        expected = dict(signature.bind(*args, **kwargs).arguments)
    except TypeError:
        expected = None
    fast = shape.bind((), args, kwargs)
    assert fast == expected
    if fast is not None:
        assert list(fast) == list(expected)  # in the signature's order, as the type check walks them


def test_star_arguments_are_checked_item_by_item():
    def target(a: int, *rest: int, **more: str) -> None: ...

    check_call(target, "target", (), [1, 2, 3], {"x": "y"})
    with pytest.raises(PayloadError, match="argument 'rest' of target is a str, not int"):
        check_call(target, "target", (), [1, "2"], {})
    with pytest.raises(PayloadError, match="argument 'more' of target is a int, not str"):
        check_call(target, "target", (), [1], {"x": 5})


def test_a_positional_only_signature_is_bound_the_slow_way():
    def target(a: int, /, b: int) -> None: ...

    assert _read_shape(target).names is None
    check_call(target, "target", (), [1, 2], {})
    with pytest.raises(PayloadError, match="do not fit it"):
        check_call(target, "target", (), [], {"a": 1, "b": 2})


def test_a_plain_call_that_does_not_fit_is_worded_by_signature_bind():
    def target(a: int, *, b: str = "") -> None: ...

    check_call(target, "target", (), [1], {"b": "x"})
    with pytest.raises(PayloadError, match="the arguments of target do not fit it: too many positional"):
        check_call(target, "target", (), [1, 2], {})
    with pytest.raises(PayloadError, match="do not fit it: missing a required argument: 'a'"):
        check_call(target, "target", (), [], {"b": "x"})
    with pytest.raises(PayloadError, match="argument 'b' of target is a int, not str"):
        check_call(target, "target", (), [1], {"b": 2})
    check_call(target, "target", (), [1], {"b": 2}, types=False)


def test_a_bound_instance_fills_the_first_parameter():
    class Module:
        def method(self, n: int) -> None: ...

    check_call(Module.method, "Module.method", (Module(),), [1], {})
    with pytest.raises(PayloadError, match="argument 'n' of Module.method is a str"):
        check_call(Module.method, "Module.method", (Module(),), ["1"], {})
