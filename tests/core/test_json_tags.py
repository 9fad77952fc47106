"""core.json's tag registry: a type of one's own round-trips; core.db's tags come with core.db."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core import db
from core import json as tagged_json

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    label: Any


class PointTag(tagged_json.JSONTag):
    key = "~test-point"
    types = (Point,)

    def to_json(self, value: Point, nested: tagged_json.Nested) -> Any:
        return [value.x, nested.value(value.label)]

    def to_python(self, payload: Any) -> Point:
        x, label = payload
        return Point(x, label)


class Base:
    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Base) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


class Derived(Base):
    pass


class BaseTag(tagged_json.JSONTag):
    """Takes every subclass through check(); each comes back as the base class."""

    key = "~test-base"

    def check(self, value: Any) -> bool:
        return isinstance(value, Base)

    def to_json(self, value: Base, nested: tagged_json.Nested) -> Any:
        return value.n

    def to_python(self, payload: Any) -> Base:
        return Base(payload)


tagged_json.register(PointTag())
tagged_json.register(BaseTag())


def test_a_registered_type_round_trips_with_tagged_values_inside() -> None:
    value = {"p": Point(1, (b"x", {2}))}
    text = tagged_json.dumps(value)
    assert text == '{"p":{"~test-point":[1,{"~tu":[{"~b":"eA=="},{"~s":[2]}]}]}}'
    assert tagged_json.loads(text) == value
    assert type(tagged_json.loads(text)["p"].label) is tuple


def test_check_takes_types_beyond_the_exact_ones() -> None:
    assert tagged_json.dumps([Derived(3)]) == '[{"~test-base":3}]'
    assert tagged_json.loads(tagged_json.dumps(Derived(3))) == Base(3)


def test_an_error_inside_a_tagged_value_names_where_it_sits() -> None:
    with pytest.raises(TypeError, match=r"cannot serialize object of type object at args\[0\]\[1\]"):
        tagged_json.dumps([Point(1, [0, object()])], path="args")


def test_duplicates_and_bad_keys_are_refused() -> None:
    with pytest.raises(KeyError, match="~test-point"):
        tagged_json.register(PointTag())
    with pytest.raises(KeyError, match="~dt"):
        tagged_json.register(type("DateTag", (PointTag,), {"key": "~dt", "types": ()})())
    with pytest.raises(KeyError, match="tuple"):
        tagged_json.register(type("TupleTag", (PointTag,), {"key": "~test-tuple", "types": (tuple,)})())
    with pytest.raises(ValueError, match="starts with"):
        tagged_json.register(type("NoPrefix", (PointTag,), {"key": "point", "types": ()})())


def test_force_replaces_a_tag() -> None:
    class Loud(PointTag):
        def to_python(self, payload: Any) -> Point:
            return Point(payload[0] * 10, payload[1])

    tagged_json.register(Loud(), force=True)
    try:
        assert tagged_json.loads('{"~test-point":[1,null]}') == Point(10, None)
    finally:
        tagged_json.register(PointTag(), force=True)
    assert tagged_json.loads('{"~test-point":[1,null]}') == Point(1, None)


def test_keys_and_entities_keep_their_wire_form() -> None:
    key = db.Key("K", 1, project="p")
    entity = db.Entity(key, exclude_from_indexes=("b",))
    entity.update({"a": key, "b": b""})
    assert tagged_json.dumps(entity) == (
        f'{{"~e":["{key.to_urlsafe()}",{{"a":{{"~k":"{key.to_urlsafe()}"}},"b":{{"~b":""}}}},["b"]]}}')
    assert tagged_json.dumps(db.Key("K", project="p")) == '{"~k":["p",null,null,["K"]]}'


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_codec_alone_names_what_registers_a_missing_tag() -> None:
    result = _run("""
        import sys
        import core.json
        assert "core.db" not in sys.modules
        try:
            core.json.loads('{"~k": ["p", null, null, ["K", 1]]}')
        except ValueError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "unknown tag '~k' in tagged JSON (import core.db, which registers it)" in result.stdout


@pytest.mark.parametrize("module", ["core.tasks.message", "core.tasks.deferred", "core.tasks.records",
                                    "core.tasks.lifecycle", "core.tasks.outbox", "core.db"])
def test_every_room_that_decodes_payloads_brings_the_datastore_tags(module: str) -> None:
    result = _run(f"""
        import importlib, sys
        importlib.import_module({module!r})
        import core.json
        key = core.json.loads('{{"~k": ["p", null, null, ["K", 1]]}}')
        entity = core.json.loads('{{"~e": [null, {{"k": {{"~k": ["p", "ns", null, ["K", "a"]]}}}}]}}')
        print(type(key).__module__, key.flat_path, type(entity["k"]).__name__, entity["k"].namespace)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["core.db", "('K',", "1)", "Key", "ns"]
