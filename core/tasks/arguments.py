"""Checks a call against its target: at the deferred call, and again before the task runs.

At the call (:func:`check_deferred_call`): missing or extra arguments, and values that do not
match a simple type hint (``int``, ``str``, ``float``, ``bool``, ``bytes``, ``db.Key``, the
``datetime`` types, ``Decimal``, ``UUID``, ``Optional``/``Union`` of these, ``list[...]`` /
``dict[...]`` and other containers shallowly) raise :class:`DeferredArgumentError` naming the
function and the argument; nothing is queued. Other hints are left to the run, so the call never
refuses what the task would take.

Before the run (:func:`check_call`): a signed task whose arguments the target cannot take can
never succeed; calling it would raise ``TypeError`` somewhere inside the target, which looks like
an ordinary failure and is retried forever. Checked here, before the call, it ends as a
:class:`PayloadError`: a dead letter.
"""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import inspect
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from core import db
from core.tasks.errors import DeferredArgumentError, PayloadError

#: Hints the call site checks, with the classes a value may have there. A key or an entity may be
#: the library's class at the call: the wire turns it into ``core.db``'s.
_CALL_SITE_TYPES: dict[Any, tuple[type, ...]] = {
    **{t: (t,) for t in (int, str, bool, bytes, datetime.datetime, datetime.date, datetime.time,
                         datetime.timedelta, decimal.Decimal, uuid.UUID, list, dict, tuple, set, frozenset)},
    float: (float, int), db.Key: (db.Key.__mro__[1],), db.Entity: (db.Entity.__mro__[1],),
    type(None): (type(None),), None: (type(None),),
}
_QUOTED_NAME = re.compile(r"'([^']+)'")


def check_call(func: Callable[..., Any], name: str, bound: tuple[Any, ...], args: list[Any],
               kwargs: dict[str, Any], *, types: bool = True) -> None:
    """Raise :class:`PayloadError` naming ``name`` unless ``func(*bound, *args, **kwargs)`` fits its signature.

    ``types=False`` checks names and count only: for input a form built (an optional field is
    ``None`` whatever the annotation says), not a caller.
    """
    shape = _shape(func) if inspect.isfunction(func) else _read_shape(func)
    signature = shape.signature
    if signature is None:
        return  # no signature to check against (a builtin): the call itself decides
    arguments = shape.bind(bound, args, kwargs)
    if arguments is None:
        try:
            arguments = signature.bind(*bound, *args, **kwargs).arguments
        except TypeError as exc:
            raise PayloadError(f"the arguments of {name} do not fit it: {exc}") from None
    hints = shape.hints if types else {}
    if not hints:
        return
    for parameter, value in list(arguments.items())[len(bound):]:
        expected = hints.get(parameter)
        if expected is None:
            continue
        kind = signature.parameters[parameter].kind
        values = (value if kind is inspect.Parameter.VAR_POSITIONAL
                  else value.values() if kind is inspect.Parameter.VAR_KEYWORD else (value,))
        for item in values:
            if not _matches(item, expected):
                raise PayloadError(f"argument {parameter!r} of {name} is a {type(item).__name__}, "
                                   f"not {_describe(expected)}")


def check_deferred_call(func: Callable[..., Any], bound: tuple[Any, ...], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> None:
    """Raise :class:`DeferredArgumentError` unless the call can run: arguments that fit the signature,
    values that match its simple hints. The deferred call's own check, before anything is sent."""
    shape = _shape(func) if inspect.isfunction(func) else _read_shape(func)
    if shape.signature is None:
        return
    arguments = shape.bind(bound, args, kwargs)
    if arguments is None:
        try:
            arguments = shape.signature.bind(*bound, *args, **kwargs).arguments
        except TypeError as exc:
            quoted = _QUOTED_NAME.search(str(exc))
            raise _call_error(func, str(exc), quoted[1] if quoted else None) from None
    for parameter, allowed, spread in shape.call_site_types:
        if parameter in arguments:
            value = arguments[parameter]
            for item in (value.values() if spread == "**" else value) if spread else (value,):
                if not isinstance(item, allowed):
                    raise _call_error(func, f"argument {parameter!r} is a {type(item).__name__}, "
                                            f"not {_describe(shape.hints[parameter])}", parameter)


def _call_error(func: Callable[..., Any], reason: str, argument: str | None) -> DeferredArgumentError:
    name = getattr(func, "__qualname__", repr(func))
    return DeferredArgumentError(f"cannot defer {name}: {reason}", function=name, argument=argument)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a call is checked against: the signature, the resolved hints, and for a signature
    without positional-only parameters the names :meth:`bind` needs."""

    signature: inspect.Signature | None
    hints: dict[str, Any]
    #: The named parameters (not ``*args`` / ``**kwargs``) in order; ``None`` for a positional-only one.
    names: tuple[str, ...] | None = None
    positional: int = 0
    required: frozenset[str] = frozenset()
    #: The names of ``*args`` and ``**kwargs``, if the signature has them.
    var_positional: str | None = None
    var_keyword: str | None = None
    #: Every parameter's name in the signature's order (where ``*args`` and ``**kwargs`` go).
    order: tuple[str, ...] = ()
    #: The parameters whose hints the call site checks: name, the classes their values may have,
    #: and ``"*"`` / ``"**"`` for ``*args`` / ``**kwargs`` (each item checked), else ``""``.
    call_site_types: tuple[tuple[str, tuple[type, ...], str], ...] = ()

    def bind(self, bound: tuple[Any, ...], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments by name, in the signature's order, as ``Signature.bind`` gives them.

        ``None`` when the signature has positional-only parameters or the call does not fit:
        ``Signature.bind`` (several times slower) then decides and words the error.
        """
        names = self.names
        if names is None:
            return None
        given_positional = (*bound, *args)
        extra = len(given_positional) - self.positional
        if extra > 0 and self.var_positional is None:
            return None
        given = dict(zip(names, given_positional[:self.positional]))
        if extra > 0:
            given[self.var_positional] = given_positional[self.positional:]  # type: ignore[index]
        more: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in names:
                if key in given:
                    return None  # given twice
                given[key] = value
            elif self.var_keyword is not None:  # also a key named like ``*args``, as Python does
                more[key] = value
            else:
                return None
        if not self.required <= given.keys():
            return None
        if more:
            given[self.var_keyword] = more  # type: ignore[index]
        if kwargs or extra > 0:
            given = {key: given[key] for key in self.order if key in given}
        return given


@functools.lru_cache(maxsize=1024)
def _shape(func: Callable[..., Any]) -> Shape:
    """:func:`_read_shape` once per function: a task target's signature and hints do not change."""
    return _read_shape(func)


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _read_shape(func: Callable[..., Any]) -> Shape:
    """The signature of ``func`` (``None`` if it has none), its resolved type hints, and its names."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return Shape(None, {})
    parameters = signature.parameters.values()
    hints = _hints(func)
    spreads: dict[inspect._ParameterKind, str] = {inspect.Parameter.VAR_POSITIONAL: "*",
                                                  inspect.Parameter.VAR_KEYWORD: "**"}
    checked = tuple((name, allowed, spreads.get(signature.parameters[name].kind, ""))
                    for name, hint in hints.items()
                    if name in signature.parameters and (allowed := _call_site_types(hint)) is not None)
    if any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in parameters):
        return Shape(signature, hints, call_site_types=checked)
    named = [p for p in parameters if p.kind in _NAMED]
    by_kind = {p.kind: p.name for p in parameters if p.kind not in _NAMED}
    return Shape(signature, hints, call_site_types=checked, names=tuple(p.name for p in named),
                 positional=sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in named),
                 required=frozenset(p.name for p in named if p.default is inspect.Parameter.empty),
                 var_positional=by_kind.get(inspect.Parameter.VAR_POSITIONAL),
                 var_keyword=by_kind.get(inspect.Parameter.VAR_KEYWORD), order=tuple(signature.parameters))


def _call_site_types(hint: Any) -> tuple[type, ...] | None:
    """The classes a value of a simple ``hint`` may have at the call; ``None`` for a hint left to the run."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [_call_site_types(option) for option in typing.get_args(hint)]
        if any(m is None for m in members):
            return None  # one member the call site cannot judge: it might take the value
        return tuple(t for m in members for t in m)  # type: ignore[union-attr]
    try:
        return _CALL_SITE_TYPES.get(origin if origin is not None else hint)
    except TypeError:  # an unhashable annotation
        return None


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # annotations naming what only a type checker imports: nothing to check
        return {}


def _matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` can be an instance of the annotation ``expected`` (checked shallowly)."""
    if expected is Any or expected is object:
        return True
    if expected is None or expected is type(None):
        return value is None
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, option) for option in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin is not None:
        expected = origin
    if not isinstance(expected, type):
        return True  # a TypeVar, a Protocol, ...: nothing shallow to check
    if expected is float and type(value) is int:
        return True  # the numeric tower: an int is a fine float
    try:
        return isinstance(value, expected)
    except TypeError:  # a generic or protocol isinstance cannot test
        return True


def _describe(expected: Any) -> str:
    return getattr(expected, "__name__", None) or str(expected)
