"""Ids from outside (URL segments, query fields) that name Datastore keys, checked before any lookup.

Datastore refuses a key whose name is empty, over 1,500 bytes of UTF-8 or of the reserved form
``__name__``, and a numeric id outside 1..2**63-1: asking it for such a key is a server error. Every
route that takes an id passes it through :func:`key_id` first, so an id that cannot be a key is a
400 (werkzeug's ``BadRequest``, which Flask answers in any view) and never reaches the store.
"""
from __future__ import annotations

import re
from typing import Literal, overload

from werkzeug.exceptions import BadRequest

#: Datastore's limit on a key name, in bytes of UTF-8.
MAX_KEY_NAME_BYTES = 1500
#: Datastore's numeric ids are positive 64-bit integers.
MAX_INT_ID = 2**63 - 1
_INT_ID_RE = re.compile(r"[1-9][0-9]{0,18}")
_RESERVED_RE = re.compile(r"__.*__", re.DOTALL)
_SHOWN = 40


class MalformedId(BadRequest):
    """An id from outside that cannot name a Datastore key (answered 400)."""


@overload
def key_id(value: str | None, *, what: str, numeric: Literal[False] = False,
           pattern: re.Pattern[str] | None = None) -> str: ...
@overload
def key_id(value: str | None, *, what: str, numeric: Literal[True],
           pattern: re.Pattern[str] | None = None) -> int: ...
def key_id(value: str | None, *, what: str, numeric: bool = False,
           pattern: re.Pattern[str] | None = None) -> str | int:
    """``value`` as a key name (or, with ``numeric``, a numeric id), or :class:`MalformedId`.

    ``what`` names the id in the message (``"query iterator run id"``); ``pattern``, when given,
    is the stricter form the ids of that kind have (a uuid's hex, a task id), matched in full.
    """
    text = value if isinstance(value, str) else ""
    shown = repr(text[:_SHOWN]) + ("…" if len(text) > _SHOWN else "")
    if numeric:
        if not _INT_ID_RE.fullmatch(text) or int(text) > MAX_INT_ID:
            raise MalformedId(f"malformed {what} {shown}: not a number from 1 to {MAX_INT_ID}")
        return int(text)
    if not text:
        raise MalformedId(f"malformed {what}: empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        raise MalformedId(f"malformed {what} {shown}: not valid text") from None
    if size > MAX_KEY_NAME_BYTES:
        raise MalformedId(f"malformed {what} {shown}: {size} bytes, more than a key name may have "
                          f"({MAX_KEY_NAME_BYTES})")
    if _RESERVED_RE.fullmatch(text):
        raise MalformedId(f"malformed {what} {shown}: names of the form __name__ are reserved")
    if pattern is not None and not pattern.fullmatch(text):
        raise MalformedId(f"malformed {what} {shown}")
    return text
