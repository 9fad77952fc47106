"""Names a package re-exports but imports on first use (PEP 562 ``__getattr__``).

A package lists ``{name: module}`` and sets ``__getattr__ = lazy.exports(__name__, _EXPORTS)``; so
importing one room (the local queue, the devserver) does not import every other one.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def exports(package: str, names: Mapping[str, str],
            cache: MutableMapping[str, Any] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` and returns its ``name``.

    With ``cache`` (the package's ``globals()``) each value is kept, so the next look-up is plain.
    """
    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        if cache is not None:
            cache[name] = value
        return value

    return __getattr__
