"""Short reprs of values that came from outside: they never raise, however odd the value.

``repr`` can raise (an int of over 4,300 digits, a broken ``__repr__``) and can be huge; error
messages and admin pages that show a task's values use :func:`safe_repr` instead.
"""
from __future__ import annotations

import reprlib
import sys
from typing import Any


def too_long_for_text(number: int) -> bool:
    """Whether ``str(number)`` would raise (Python caps int-to-text conversion at some 4,300 digits)."""
    limit = sys.get_int_max_str_digits()
    return limit > 0 and number.bit_length() > limit * 3.3


class _SafeRepr(reprlib.Repr):
    """``reprlib`` with a text for ints too long to convert (``repr`` raises for those)."""

    def repr_int(self, x: int, level: int) -> str:
        if too_long_for_text(x):
            return f"<int of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_safe_repr = _SafeRepr()
_safe_repr.maxstring = _safe_repr.maxother = 160


def safe_repr(value: Any) -> str:
    """A short ``repr`` of any stored value that never raises (huge ints, nesting, broken ``__repr__``)."""
    try:
        return _safe_repr.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
