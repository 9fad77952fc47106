"""Lossless tagged JSON: the wire format of deferred-call arguments.

Plain JSON loses types (a tuple comes back as a list, a datetime cannot be written at all), so every
value JSON cannot carry exactly is written as a single-key object whose key is a tag:

========  ===========================  ==========================================================
tag       type                         payload
========  ===========================  ==========================================================
``~k``    ``core.db.Key``              URL-safe string; ``[project, namespace, database, flat_path]``
                                       for keys it cannot express (partial, named database, ...)
``~e``    ``core.db.Entity``           ``[key or null, {properties}]`` + sorted excluded names
``~g``    ``GeoPoint``                 ``[latitude, longitude]`` (``google.cloud.datastore.helpers``)
``~dt``   ``datetime.datetime``        ISO 8601 string; ``[iso, zone or null, fold]`` for a ``ZoneInfo``
                                       zone or ``fold=1``
``~d``    ``datetime.date``            ISO 8601 string
``~t``    ``datetime.time``            like ``~dt``
``~td``   ``datetime.timedelta``       whole microseconds
``~b``    ``bytes``                    base64
``~s``    ``set``                      members, sorted by their encoded form
``~fs``   ``frozenset``                members, sorted by their encoded form
``~tu``   ``tuple``                    items
``~dec``  ``decimal.Decimal``          ``str()`` of it: exact digits and exponent
``~u``    ``uuid.UUID``                32 hex digits
``~m``    ``dict``                     ``[[key, value], ...]``: non-str keys, or a look-alike
``~f``    ``float``                    ``"nan"``, ``"inf"`` or ``"-inf"`` (JSON has no such numbers)
``~i``    ``int``                      hex digits, for ints too long for Python's decimal limit
========  ===========================  ==========================================================

A plain dict with one key starting with ``~`` is written in the ``~m`` form, so it can never be
mistaken for a tag; a decoder that meets an unknown tag raises ``ValueError`` instead of guessing.

Tags live in a registry, as in Flask's ``TaggedJSONSerializer``: ``core.db`` registers ``~k``,
``~e`` and ``~g`` when it is imported (this module knows nothing of Datastore), and an app registers a type of
its own the same way, once, at import: subclass :class:`JSONTag` (``key``, ``types``, ``to_json``,
``to_python``) and pass an instance to :func:`register` (the README shows one).
Every module here that decodes task payloads imports ``core.db``, so a payload holding keys decodes
whichever module a process imported first.

Only the exact types above (and ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``) are
accepted: a subclass such as an ``IntEnum`` or an ``OrderedDict`` would come back as its base type,
so it is refused like any other object, with a ``TypeError`` that says where it sits. Keys and
entities are the exception: any ``google.cloud.datastore`` key or entity is accepted and comes back
as the ``core.db`` class. Output is pure ASCII, so every ``str`` (even lone surrogates) survives.
Naive datetimes and times stay naive; aware ones come back with an equal UTC offset (as a fixed
``datetime.timezone``) or, if their zone is a ``ZoneInfo``, in that zone with the same ``fold``.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

from core.json.decoding import DECODERS, TAG_PREFIX, jsonDecodeObjectHook, loads

__all__ = ["JsonKeyEncoder", "jsonDecodeObjectHook", "dumps", "loads", "check_serializable", "SerializationError",
           "JSONTag", "Nested", "TagRegistry", "register"]


# Ints at least this large are tagged as hex: Python refuses str(int) past 4300 digits by default
# (and may be configured down to 640), hex conversion is never limited.
_BIG_INT = 1 << 1024

_Tree = Any  # what the stdlib encoder can write: dict[str, _Tree] | list[_Tree] | str | int | float | bool | None
_Encoder = Callable[[Any, set[int]], _Tree]

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False, check_circular=False)


def _compact_writer() -> Callable[[Any], str]:
    """``_COMPACT.encode`` without its set-up on every call: the stdlib's C encoder with the same options,
    made once (it keeps nothing between calls); ``_COMPACT.encode`` itself where the C encoder is missing."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return _COMPACT.encode
    encode = make(None, _COMPACT.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    return lambda tree: "".join(encode(tree, 0))


#: Writes a tree of plain JSON types (what :func:`_encode` makes, or a value :func:`_is_plain` passed).
_write = _compact_writer()


# --- encoding -----------------------------------------------------------------------------------

class SerializationError(TypeError):
    """A value that cannot be encoded: ``reason`` says why, ``location`` where below the root.

    ``location`` is a Python-like suffix (``[1]['user']``, ``.keys[0]``, ``.members[2]``), so a
    caller can name the root in its own terms.
    """

    def __init__(self, reason: str, root: str, location: str, message: str | None = None) -> None:
        super().__init__(message or f"{reason} at {root}{location}")
        self.reason, self.root, self.location = reason, root, location


class _Unserializable(Exception):
    """Raised deep in the encoder; collects the path while unwinding, becomes a TypeError at the top."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []

    def to_type_error(self, root: str) -> SerializationError:
        return SerializationError(self.reason, root, "".join(reversed(self.segments)))


def _key_segment(key: Any) -> str:
    try:
        text = repr(key)
    except Exception:  # noqa: BLE001 - e.g. an int past the decimal digit limit
        text = f"<{type(key).__qualname__}>"
    return f"[{text if len(text) <= 60 else text[:57] + '...'}]"


def _encode(value: Any, active: set[int]) -> _Tree:
    """Turn ``value`` into a tree of plain JSON types; ``active`` holds containers being encoded."""
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        return value if -_BIG_INT < value < _BIG_INT else {"~i": format(value, "x")}
    if cls is float:
        return value if value - value == 0.0 else {"~f": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    encoder = _ENCODERS.get(cls) or _REGISTRY.late_encoder(value)
    return encoder(value, active)


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _enter(container: Any, active: set[int]) -> int:
    ident = id(container)
    if ident in active:
        raise _Unserializable(f"cannot serialize {_article(type(container).__qualname__)} that contains itself")
    active.add(ident)
    return ident


def _encode_items(items: Any, active: set[int]) -> list[_Tree]:
    """Encode a sequence; an error inside names the item's index."""
    out: list[_Tree] = []
    append = out.append
    try:
        for item in items:
            cls = type(item)
            if cls is str or cls is bool or item is None or (cls is int and -_BIG_INT < item < _BIG_INT):
                append(item)
            else:
                append(_encode(item, active))
    except _Unserializable as exc:
        exc.segments.append(f"[{len(out)}]")
        raise
    return out


def _encode_list(value: list[Any], active: set[int]) -> _Tree:
    ident = _enter(value, active)
    try:
        return _encode_items(value, active)
    finally:
        active.discard(ident)


def _encode_tuple(value: tuple[Any, ...], active: set[int]) -> _Tree:
    return {"~tu": _encode_items(value, active)}


def _encode_members(members: set[Any] | frozenset[Any], active: set[int]) -> list[_Tree]:
    """Encode set members in the order of their encoded text, so equal sets encode equally."""
    encoded: list[tuple[str, _Tree]] = []
    for index, member in enumerate(members):
        if type(member) is int and -_BIG_INT < member < _BIG_INT:
            encoded.append((str(member), member))  # the same text the JSON encoder writes, faster
            continue
        try:
            tree = _encode(member, active)
        except _Unserializable as exc:
            exc.segments.append(f".members[{index}]")
            raise
        encoded.append((_COMPACT.encode(tree), tree))
    encoded.sort(key=lambda pair: pair[0])
    return [tree for _, tree in encoded]


def _encode_set(value: set[Any], active: set[int]) -> _Tree:
    return {"~s": _encode_members(value, active)}


def _encode_frozenset(value: frozenset[Any], active: set[int]) -> _Tree:
    return {"~fs": _encode_members(value, active)}


def _encode_mapping(value: dict[Any, Any], active: set[int]) -> _Tree:
    """A dict stays a JSON object when that is unambiguous, else becomes ``~m`` pairs."""
    ident = _enter(value, active)
    try:
        plain = all(type(k) is str for k in value)
        if plain and len(value) == 1:
            plain = not next(iter(value)).startswith(TAG_PREFIX)
        if plain:
            out: dict[str, _Tree] = {}
            key: Any = None
            try:
                for key, item in value.items():
                    out[key] = _encode(item, active)
            except _Unserializable as exc:
                exc.segments.append(_key_segment(key))
                raise
            return out
        pairs: list[_Tree] = []
        for index, (key, item) in enumerate(value.items()):
            try:
                encoded_key = _encode(key, active)
            except _Unserializable as exc:
                exc.segments.append(f".keys[{index}]")
                raise
            try:
                pairs.append([encoded_key, _encode(item, active)])
            except _Unserializable as exc:
                exc.segments.append(_key_segment(key))
                raise
        return {"~m": pairs}
    finally:
        active.discard(ident)


def _encode_datetime(value: datetime.datetime, active: set[int]) -> _Tree:
    zone = _zone_key(value.tzinfo)
    if zone is None and not value.fold:
        return {"~dt": value.isoformat()}
    return {"~dt": [value.isoformat(), zone, value.fold]}


def _encode_time(value: datetime.time, active: set[int]) -> _Tree:
    # A ZoneInfo cannot give a time of day an offset, so isoformat() writes none: keep the zone.
    zone = _zone_key(value.tzinfo)
    if zone is None and not value.fold:
        return {"~t": value.isoformat()}
    return {"~t": [value.isoformat(), zone, value.fold]}


def _zone_key(tz: datetime.tzinfo | None) -> str | None:
    return tz.key if type(tz) is zoneinfo.ZoneInfo else None


_ENCODERS: dict[type, _Encoder] = {
    list: _encode_list,
    dict: _encode_mapping,
    tuple: _encode_tuple,
    set: _encode_set,
    frozenset: _encode_frozenset,
    datetime.datetime: _encode_datetime,
    datetime.date: lambda v, _: {"~d": v.isoformat()},
    datetime.time: _encode_time,
    datetime.timedelta: lambda v, _: {"~td": v // datetime.timedelta(microseconds=1)},
    bytes: lambda v, _: {"~b": base64.b64encode(v).decode("ascii")},
    decimal.Decimal: lambda v, _: {"~dec": str(v)},
    uuid.UUID: lambda v, _: {"~u": v.hex},
}

_SUPPORTED_BASES: tuple[type, ...] = (
    str, int, float, list, dict, tuple, set, frozenset, datetime.datetime, datetime.date, datetime.time,
    datetime.timedelta, bytes, decimal.Decimal, uuid.UUID)


_PLAIN_LEAVES = frozenset({str, bool, type(None)})


def _is_plain(value: Any) -> bool:
    """Whether ``value`` is its own tagged form, so the stdlib encoder may write it as it is.

    Plain is ``str``, ``bool``, ``None``, an ``int`` below the hex limit, a finite ``float``, and
    ``list`` / ``dict`` (``str`` keys, not one lone tag-like key) of plain values: exact types only,
    as :func:`_encode` has them. A cycle raises ``RecursionError``; the caller then takes the tagged path.
    """
    cls = type(value)
    if cls is dict:
        for key in value:
            if type(key) is not str:
                return False
        if len(value) == 1 and key.startswith(TAG_PREFIX):
            return False
        items: Any = value.values()
    elif cls is list:
        items = value
    else:
        items = (value,)
    for item in items:
        cls = type(item)
        if cls in _PLAIN_LEAVES:
            continue
        if cls is int:
            if not -_BIG_INT < item < _BIG_INT:
                return False
        elif cls is float:
            if item - item != 0.0:
                return False
        elif cls is dict or cls is list:
            if not _is_plain(item):
                return False
        else:
            return False
    return True


def _to_tree(value: Any, path: str) -> _Tree:
    try:
        return _encode(value, set())
    except _Unserializable as exc:
        raise exc.to_type_error(path) from None
    except RecursionError:
        raise SerializationError("nested too deeply to serialize", path, "",
                                 f"cannot serialize {path}: nested too deeply") from None


# --- the tag registry ---------------------------------------------------------------------------

class Nested:
    """What a tag's ``to_json`` writes the values inside its value with (cycle checks, error paths)."""

    __slots__ = ("_active",)

    def __init__(self, active: set[int]) -> None:
        self._active = active

    def value(self, value: Any) -> _Tree:
        """Any value the codec carries, in its tagged form."""
        return _encode(value, self._active)

    def mapping(self, value: Any) -> _Tree:
        """A mapping (a ``dict`` or a subclass) written as a plain dict of it would be."""
        return _encode_mapping(value, self._active)


class JSONTag:
    """One type the codec carries beyond the built-in ones; register an instance with :func:`register`.

    ``key`` is the tag written on the wire (it must start with ``~``); values whose exact type is in
    ``types`` use it, and so do values :meth:`check` accepts (e.g. every subclass of a library's class).
    """

    key: str = ""
    types: tuple[type, ...] = ()

    def check(self, value: Any) -> bool:
        """Whether a value of a type not in ``types`` is written with this tag."""
        return False

    def to_json(self, value: Any, nested: Nested) -> _Tree:
        """The payload that stands beside the key: JSON types, or ``nested.value(...)`` of what it holds."""
        raise NotImplementedError

    def to_python(self, payload: Any) -> Any:
        """The value back from its payload (whose own tagged values are decoded already)."""
        raise NotImplementedError


class TagRegistry:
    """The codec's tags by key and by type; duplicates raise ``KeyError`` unless forced (as Flask's)."""

    def __init__(self, encoders: dict[type, _Encoder], decoders: dict[str, Callable[[Any], Any]]) -> None:
        self.encoders, self.decoders = encoders, decoders
        self.tags: dict[str, tuple[JSONTag, _Encoder]] = {}
        self._bases: list[type] = list(_SUPPORTED_BASES)

    def register(self, tag: JSONTag, *, force: bool = False) -> JSONTag:
        """Add ``tag``; with ``force`` it replaces a tag of the same key or type."""
        if not tag.key.startswith(TAG_PREFIX) or len(tag.key) < 2:
            raise ValueError(f"a tag key starts with {TAG_PREFIX!r} and names the tag: {tag.key!r}")
        taken = [t.__qualname__ for t in tag.types if t in self.encoders]
        if not force and (tag.key in self.decoders or taken):
            raise KeyError(f"tag {tag.key!r} or type {', '.join(taken) or '-'} is registered already")

        def encode(value: Any, active: set[int]) -> _Tree:
            return {tag.key: tag.to_json(value, Nested(active))}

        self.tags[tag.key] = (tag, encode)
        self.decoders[tag.key] = tag.to_python
        self.encoders.update(dict.fromkeys(tag.types, encode))
        self._bases.extend(tag.types)
        return tag

    def late_encoder(self, value: Any) -> _Encoder:
        """The encoder of a type met for the first time: a tag whose ``check`` takes it, or a refusal."""
        for tag, encode in self.tags.values():
            if tag.check(value):
                self.encoders[type(value)] = encode
                return encode
        reason = f"cannot serialize object of type {type(value).__qualname__}"
        for base in self._bases:
            if isinstance(value, base):
                reason += f" (a subclass of {base.__qualname__}; only the exact type round-trips)"
                break
        raise _Unserializable(reason)


_REGISTRY = TagRegistry(_ENCODERS, DECODERS)

#: Add a :class:`JSONTag` to the codec (``register(MyTag())``); see the module's docstring.
register = _REGISTRY.register

# --- public API ---------------------------------------------------------------------------------

class JsonKeyEncoder(json.JSONEncoder):
    """``json.dumps(value, cls=JsonKeyEncoder)`` writes the tagged form of ``value``.

    The value is converted before the stdlib encoder sees it, because the stdlib would otherwise
    turn tuples and sets into lists and non-str dict keys into strings without asking.
    """

    def encode(self, o: Any) -> str:
        # Not super().encode(): it would call our iterencode and convert the tree a second time.
        return "".join(super().iterencode(_to_tree(o, "$"), _one_shot=True))

    def iterencode(self, o: Any, _one_shot: bool = False) -> Iterator[str]:
        return super().iterencode(_to_tree(o, "$"), _one_shot)

    def default(self, o: Any) -> Any:
        return _to_tree(o, "$")


def dumps(obj: Any, path: str = "$") -> str:
    """Compact, deterministic, ASCII tagged JSON for ``obj``.

    Raises ``TypeError`` naming the offending value's type and where it sits, with ``path`` as the
    name of the root (e.g. ``"args"`` gives ``... at args[1]['user']``).
    """
    try:
        plain = _is_plain(obj)
    except RecursionError:  # a cycle, or deeper than Python goes: the tagged path names which
        plain = False
    return _write(obj if plain else _to_tree(obj, path))


def check_serializable(obj: Any, path: str = "$") -> None:
    """Raise the ``TypeError`` :func:`dumps` would raise for ``obj``, else return ``None``."""
    _to_tree(obj, path)
