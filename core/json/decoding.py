"""Reading tagged JSON back (:mod:`core.json` writes it): the built-in tags' decoders, the object
hook, and :func:`loads`. The codec's registry (:func:`core.json.register`) adds an app's tags to
:data:`DECODERS`.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any

#: Every tag key starts with this; plain dicts with one such key are escaped.
TAG_PREFIX = "~"
#: Tags registered by a module of this package on import: named in the error for a missing one.
REGISTERED_BY = {"~k": "core.db", "~e": "core.db", "~g": "core.db"}


# --- the built-in tags -----------------------------------------------------------------------------------

def _expect(payload: Any, cls: type) -> Any:
    if type(payload) is not cls:
        raise ValueError(f"expected {cls.__name__}, got {type(payload).__name__}")
    return payload


def _zoned(parsed: Any, payload: Any) -> Any:
    """Put back the zone and fold that ``[iso, zone or null, fold]`` carries beside the ISO text."""
    _, zone, fold = payload
    if zone is None:
        return parsed.replace(fold=_expect(fold, int))
    try:
        tz = zoneinfo.ZoneInfo(_expect(zone, str))
    except zoneinfo.ZoneInfoNotFoundError:
        if parsed.utcoffset() is None:
            raise
        return parsed  # the offset (and for a datetime the instant) is still exact
    zoned = parsed.replace(tzinfo=tz, fold=_expect(fold, int))
    if isinstance(parsed, datetime.datetime) and zoned.utcoffset() != parsed.utcoffset():
        return parsed  # the zone's rules changed since encoding: keep the exact instant
    return zoned


def _parse_iso(cls: Any, text: Any) -> Any:
    parsed = cls.fromisoformat(_expect(text, str))
    # Python 3.11 reads an offset under one second ("+00:00:00.000001") as UTC: read it ourselves.
    if parsed.utcoffset() == _ZERO and text[-7] == "." and text[-16] in "+-" and text[-15:-7] == "00:00:00":
        offset = datetime.timedelta(microseconds=int(text[-6:]))
        parsed = parsed.replace(tzinfo=datetime.timezone(-offset if text[-16] == "-" else offset))
    return parsed


_ZERO = datetime.timedelta(0)


def _decode_datetime(payload: Any) -> datetime.datetime:
    if type(payload) is str:
        return _parse_iso(datetime.datetime, payload)
    return _zoned(_parse_iso(datetime.datetime, _expect(payload, list)[0]), payload)


def _decode_time(payload: Any) -> datetime.time:
    if type(payload) is str:
        return _parse_iso(datetime.time, payload)
    return _zoned(_parse_iso(datetime.time, _expect(payload, list)[0]), payload)


def _decode_int(payload: Any) -> int:
    return int(_expect(payload, str), 16)


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _decode_pairs(payload: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for pair in _expect(payload, list):
        key, value = _expect(pair, list)
        out[key] = value
    return out


DECODERS: dict[str, Callable[[Any], Any]] = {
    "~dt": _decode_datetime,
    "~d": lambda p: datetime.date.fromisoformat(_expect(p, str)),
    "~t": _decode_time,
    "~td": lambda p: datetime.timedelta(microseconds=_expect(p, int)),
    "~b": lambda p: base64.b64decode(_expect(p, str), validate=True),
    "~s": lambda p: set(_expect(p, list)),
    "~fs": lambda p: frozenset(_expect(p, list)),
    "~tu": lambda p: tuple(_expect(p, list)),
    "~dec": lambda p: decimal.Decimal(_expect(p, str)),
    "~u": lambda p: uuid.UUID(hex=_expect(p, str)),
    "~m": _decode_pairs,
    "~f": lambda p: _NON_FINITE[_expect(p, str)],
    "~i": _decode_int,
}


def jsonDecodeObjectHook(obj: dict[str, Any]) -> Any:
    """Turn a tagged object back into its value; other objects pass through unchanged.

    Use as ``json.loads(text, object_hook=jsonDecodeObjectHook)``. Unknown or malformed tags raise
    ``ValueError``.
    """
    if len(obj) != 1:
        return obj
    for tag, payload in obj.items():
        if not tag.startswith(TAG_PREFIX):
            return obj
        decoder = DECODERS.get(tag)
        if decoder is None:
            hint = f" (import {REGISTERED_BY[tag]}, which registers it)" if tag in REGISTERED_BY else ""
            raise ValueError(f"unknown tag {tag!r} in tagged JSON{hint}")
        try:
            return decoder(payload)
        except Exception as exc:  # noqa: BLE001 - any failure means the payload is not ours
            raise ValueError(f"malformed {tag!r} value {payload!r:.80}: {exc}") from exc
    return obj  # unreachable: the loop runs once


_DECODER = json.JSONDecoder(object_hook=jsonDecodeObjectHook)


def loads(s: str | bytes) -> Any:
    """Inverse of :func:`dumps`; raises ``ValueError`` for malformed JSON or tags.

    One decoder serves every call (``json.loads`` with a hook would build one per call); bytes are
    read as UTF-8, as ``json.loads`` reads what :func:`dumps` writes.
    """
    if isinstance(s, (bytes, bytearray)):
        s = s.decode(json.detect_encoding(s), "surrogatepass")
    elif not isinstance(s, str):
        raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(s).__name__}")
    if s.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    return _DECODER.decode(s)
