"""Task signatures: a deferred call written down instead of made (``send_invoice.s(key)``).

A :class:`Signature` names a registered ``@callDeferred`` target, its arguments and a few call
options (``_queue``, ``_countdown``, ``_target_version``). It travels through ``core.json``, so a
group or a chain can store it and make the call later, in another process. The arguments are
checked where the signature is written, as a deferred call checks them: a value that cannot
travel, an unknown keyword or too many arguments raise :class:`DeferredArgumentError` here,
naming the function and the argument. A step that receives a result (a chain's next step, a
group's callback) is checked again, with that leading argument, when the workflow is built.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any

from core import json as tagged_json
from core.tasks.arguments import check_call
from core.tasks.errors import DeferredArgumentError, PayloadError
from core.tasks.priority import queue_of
from core.tasks.runtime import get_runtime

#: Call options a signature may carry (the others make no sense for a workflow's step).
SIGNATURE_OPTIONS = ("_queue", "_countdown", "_target_version")
#: Stands for the result a step receives before it is known.
_RESULT = object()


@dataclasses.dataclass(frozen=True)
class Signature:
    """One deferred call to make later: target name, arguments, options, and the module path of a method."""

    target: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Where the module of a deferred method is mounted (``None`` for functions).
    instance: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "args": list(self.args), "kwargs": dict(self.kwargs),
                "options": dict(self.options), "instance": self.instance}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        return cls(str(data["target"]), tuple(data.get("args") or ()), dict(data.get("kwargs") or {}),
                   dict(data.get("options") or {}), data.get("instance"))

    def __repr__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.target}.s({', '.join(shown)})"


def _target_of(func: Any) -> tuple[Any, Any]:
    """The ``DeferredTarget`` behind ``func`` and the module instance it is bound to (or ``None``)."""
    target = getattr(func, "target", None)
    if target is not None and hasattr(target, "kind"):
        return target, None
    if isinstance(func, functools.partial):  # a deferred method or classmethod, bound by its descriptor
        owner = getattr(func.func, "__self__", None)
        target = getattr(owner, "target", None)
        if target is not None and len(func.args) == 2:
            return target, func.args[1]
    raise TypeError(f"{func!r} is not a @callDeferred function: only deferred targets make signatures")


def signature(func: Any, *args: Any, **kwargs: Any) -> Signature:
    """The signature of calling the deferred ``func`` with these arguments (``func.s(...)`` does the same)."""
    target, instance = _target_of(func)
    options = {k: kwargs.pop(k) for k in SIGNATURE_OPTIONS if k in kwargs}
    stray = [k for k in kwargs if k.startswith("_") and k not in _parameters(target.func)]
    if stray:
        raise DeferredArgumentError(f"{target.name}.s(): {stray[0]} is not an option a workflow step can take "
                                    f"(use {', '.join(SIGNATURE_OPTIONS)})", function=target.name,
                                    argument=f"{stray[0]}=...")
    path = None
    if target.kind == "method":
        modules = get_runtime().modules
        path = modules.path_of(instance) if modules is not None else None
        if path is None:
            raise DeferredArgumentError(f"{target.name} is a deferred method and runs on the live module "
                                        f"instance, but {instance!r} is not mounted in the app's module tree",
                                        function=target.name)
    _check_values(target, args, kwargs, options)
    try:
        inspect.signature(target.func).bind_partial(*_bound(target), *args, **kwargs)
    except TypeError as exc:
        raise DeferredArgumentError(f"{target.name}.s(): the arguments do not fit it: {exc}",
                                    function=target.name) from None
    except ValueError:
        pass  # no signature to check against
    return Signature(target.name, tuple(args), dict(kwargs), options, path)


def check_complete(runtime: Any, sig: Signature, *, receives_result: bool) -> Any:
    """The target of ``sig``, after checking the call is complete (with the leading result if it gets one)
    and its queue is one of the app's."""
    target = runtime.registry.deferred.find(sig.target)
    if target is None:
        raise DeferredArgumentError(f"{sig.target} is not a registered deferred function", function=sig.target)
    queue_of(runtime, target.name, option=sig.options.get("_queue"), declared=target.queue, priority=target.priority)
    lead = (_RESULT,) if receives_result else ()
    try:
        check_call(target.func, target.name, (*_bound(target), *lead), list(sig.args), dict(sig.kwargs))
    except PayloadError as exc:
        what = " after the result it receives" if receives_result else ""
        raise DeferredArgumentError(f"{sig!r}{what}: {exc}", function=target.name) from None
    return target


def _bound(target: Any) -> tuple[Any, ...]:
    return (_RESULT,) if target.kind in ("method", "classmethod") else ()


def _parameters(func: Any) -> Mapping[str, Any]:
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}


def _check_values(target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    labelled = [(f"args[{i}]", v) for i, v in enumerate(args)] + [(f"{k}=...", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            tagged_json.check_serializable(value)
        except tagged_json.SerializationError as exc:
            raise DeferredArgumentError(f"{target.name}.s({label}){exc.location}: {exc.reason}",
                                        function=target.name, argument=label) from None
    countdown = options.get("_countdown")
    if countdown is not None and (isinstance(countdown, bool) or not isinstance(countdown, (int, float))
                                  or countdown < 0):
        raise DeferredArgumentError(f"{target.name}.s(): _countdown must be a number of seconds >= 0, "
                                    f"got {countdown!r}", function=target.name, argument="_countdown")
