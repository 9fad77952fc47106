"""core.json: every supported value comes back equal and of the same type; everything else is refused."""
from __future__ import annotations

import collections
import datetime
import decimal
import enum
import json
import math
import uuid
import zoneinfo
from typing import Any

import pytest
from google.cloud import datastore
from google.cloud.datastore.helpers import GeoPoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import db
from core.json import JsonKeyEncoder, check_serializable, dumps, jsonDecodeObjectHook, loads

TAGS = ["~k", "~e", "~dt", "~d", "~t", "~td", "~b", "~s", "~fs", "~tu", "~dec", "~u", "~m", "~f", "~i"]

FAST = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- strict comparison: equal values AND equal types, all the way down ------------------------------

def assert_same(got: Any, want: Any, where: str = "$") -> None:
    assert type(got) is type(want) or _both_keys_or_entities(got, want), \
        f"{where}: type {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, datastore.Key):
        assert type(got) is db.Key, f"{where}: keys must decode as core.db.Key"
        assert (got.flat_path, got.project, got.namespace, got.database) == \
               (want.flat_path, want.project, want.namespace, want.database), where
    elif isinstance(want, datastore.Entity):
        assert type(got) is db.Entity, f"{where}: entities must decode as core.db.Entity"
        if want.key is None:
            assert got.key is None, where
        else:
            assert_same(got.key, want.key, f"{where}.key")
        assert got.exclude_from_indexes == want.exclude_from_indexes, where
        assert_same(dict(got), dict(want), where)
    elif isinstance(want, float):
        assert repr(got) == repr(want), where  # nan, inf and -0.0 included
    elif isinstance(want, decimal.Decimal):
        assert str(got) == str(want), where
    elif isinstance(want, datetime.datetime | datetime.time):
        assert got.replace(tzinfo=None) == want.replace(tzinfo=None), where
        assert got.utcoffset() == want.utcoffset(), f"{where}: offset"
        assert (got.tzinfo is None) == (want.tzinfo is None), f"{where}: naive stays naive, aware stays aware"
        if isinstance(want.tzinfo, zoneinfo.ZoneInfo):
            assert got.tzinfo is zoneinfo.ZoneInfo(want.tzinfo.key) and got.fold == want.fold, where
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for index, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{index}]")
    elif isinstance(want, dict):
        assert len(got) == len(want), where
        for (gk, gv), (wk, wv) in zip(got.items(), want.items()):  # insertion order is kept too
            assert_same(gk, wk, f"{where}.keys")
            assert_same(gv, wv, f"{where}[{_label(wk)}]")
    elif isinstance(want, set | frozenset):
        assert len(got) == len(want), where
        for member in want:
            assert any(_same(candidate, member) for candidate in got), f"{where}: {member!r} missing"
    else:
        assert got == want, where


def _label(key: Any) -> str:
    return f"<int of {key.bit_length()} bits>" if type(key) is int else repr(key)


def _both_keys_or_entities(got: Any, want: Any) -> bool:
    return (isinstance(want, datastore.Key) and isinstance(got, datastore.Key)) or \
        (isinstance(want, datastore.Entity) and isinstance(got, datastore.Entity))


def _same(got: Any, want: Any) -> bool:
    try:
        assert_same(got, want)
    except AssertionError:
        return False
    return True


def round_trip(value: Any) -> Any:
    text = dumps(value)
    assert text.isascii()
    json.loads(text, parse_constant=_refuse_constant)  # strict JSON: no NaN/Infinity literals
    return loads(text)


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


# --- strategies -----------------------------------------------------------------------------------

texts = st.text(max_size=12)  # full unicode, lone surrogates included
ids = st.one_of(st.integers(1, 2**63 - 1), st.integers(-(2**63), 2**63 - 1))
names = st.text(max_size=8)
kinds = st.text(min_size=1, max_size=8)
namespaces = st.one_of(st.none(), st.just(""), st.text(max_size=6))
databases = st.one_of(st.none(), st.none(), st.just("db2"))


@st.composite
def keys(draw: st.DrawFn, partial: bool | None = None) -> db.Key:
    path: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        path += [draw(kinds), draw(st.one_of(ids, names))]
    if partial if partial is not None else draw(st.booleans()):
        path.pop()
    cls = draw(st.sampled_from([db.Key, datastore.Key]))
    return cls(*path, project="p", namespace=draw(namespaces), database=draw(databases))


complete_keys = keys(partial=False)

fixed_zones = st.builds(datetime.timezone, st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=-59),
                                                         max_value=datetime.timedelta(hours=23, minutes=59)))
zones = st.one_of(st.none(), fixed_zones, st.timezones(), st.just(datetime.UTC))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**1024 - 2, max_value=2**1100),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20),
    st.datetimes(timezones=zones), st.dates(), st.times(timezones=zones), st.timedeltas(),
    st.decimals(allow_nan=False), st.uuids(), complete_keys,
)
unhashable_scalars = st.one_of(
    st.floats(), st.decimals(), keys(),  # NaN never equals itself; partial keys never equal anything
)
hashables = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(tuple), st.frozensets(inner, max_size=4)),
    max_leaves=12,
)


def _entities(values: st.SearchStrategy[Any]) -> st.SearchStrategy[db.Entity]:
    @st.composite
    def build(draw: st.DrawFn) -> db.Entity:
        properties = draw(st.dictionaries(texts, values, max_size=4))
        excluded = draw(st.lists(st.sampled_from(sorted(properties)), unique=True) if properties else st.just([]))
        cls = draw(st.sampled_from([db.Entity, datastore.Entity]))
        entity = cls(draw(st.none() | keys()), exclude_from_indexes=tuple(excluded))
        entity.update(properties)
        return entity
    return build()


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(texts, inner, max_size=4),
        st.dictionaries(st.sampled_from(TAGS + ["~", "~x", "x~"]), inner, max_size=1),  # look-alikes
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        _entities(inner),
    )


values = st.recursive(st.one_of(scalars, unhashable_scalars), _containers, max_leaves=25)


# --- properties -------------------------------------------------------------------------------------

@FAST
@given(values)
def test_round_trip_keeps_values_and_types(value: Any) -> None:
    assert_same(round_trip(value), value)


@FAST
@given(values)
def test_encoding_is_deterministic_and_stable(value: Any) -> None:
    text = dumps(value)
    assert dumps(value) == text
    assert dumps(loads(text)) == text


@FAST
@given(st.lists(hashables, max_size=8), st.randoms(use_true_random=False))
def test_equal_sets_encode_equally(members: list[Any], rnd: Any) -> None:
    unique = list(set(members))  # (a set keeps the first of 0 and False: compare like with like)
    shuffled = list(unique)
    rnd.shuffle(shuffled)
    assert dumps(set(unique)) == dumps(set(shuffled))
    assert dumps(frozenset(unique)) == dumps(frozenset(reversed(shuffled)))


@settings(FAST, max_examples=60)
@given(values)
def test_stdlib_entry_points_agree(value: Any) -> None:
    text = json.dumps(value, cls=JsonKeyEncoder)
    assert_same(json.loads(text, object_hook=jsonDecodeObjectHook), value)
    assert json.loads(text) == json.loads(dumps(value))  # same tree, only the separators differ


# --- explicit cases ---------------------------------------------------------------------------------

EMPTY_AND_ZERO = [
    b"", set(), frozenset(), (), [], {}, "", datetime.timedelta(0), decimal.Decimal(0), decimal.Decimal("0.00"),
    decimal.Decimal("-0"), 0, 0.0, -0.0, False, None, uuid.UUID(int=0), datetime.time(0),
    datetime.datetime.min, datetime.date.min, datetime.datetime.max, datetime.time.max,
    db.Entity(), ((),), {(): frozenset()}, {0: b""},
]


@pytest.mark.parametrize("value", EMPTY_AND_ZERO, ids=repr)
def test_empty_and_zero_values_survive(value: Any) -> None:
    assert_same(round_trip(value), value)
    assert_same(round_trip([value, {"v": value}, (value,)]), [value, {"v": value}, (value,)])


def test_naive_datetime_stays_naive() -> None:
    value = datetime.datetime(2026, 10, 3, 4, 5, 6, 789)
    back = round_trip(value)
    assert back == value and back.tzinfo is None


@pytest.mark.parametrize("offset", [
    datetime.timedelta(0), datetime.timedelta(hours=5, minutes=30), datetime.timedelta(hours=-9, seconds=-1),
    datetime.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999),
])
def test_aware_datetime_keeps_its_offset(offset: datetime.timedelta) -> None:
    value = datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone(offset))
    back = round_trip(value)
    assert back == value and back.utcoffset() == offset
    assert back.replace(tzinfo=None) == value.replace(tzinfo=None)


@pytest.mark.parametrize("value", [
    datetime.datetime(2021, 10, 31, 2, 30, fold=0, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),  # ambiguous, 1st
    datetime.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),  # ambiguous, 2nd
    datetime.datetime(2021, 3, 28, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),  # in the spring-forward gap
    datetime.datetime(2026, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
])
def test_zoneinfo_datetime_comes_back_in_its_zone(value: datetime.datetime) -> None:
    back = round_trip(value)
    assert back == value  # inter-zone comparison would say False in a fold or gap
    assert back.tzinfo is value.tzinfo and back.fold == value.fold and back.utcoffset() == value.utcoffset()


@pytest.mark.parametrize("value", [
    datetime.time(1, 2, 3, 456789),
    datetime.time(23, 59, 59, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))),
    datetime.time(8, tzinfo=datetime.UTC),
    datetime.time(8, 15, fold=1, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo")),
])
def test_times_keep_microseconds_and_zone(value: datetime.time) -> None:
    back = round_trip(value)
    assert_same(back, value)
    assert back.tzinfo == value.tzinfo


@pytest.mark.parametrize("tag", TAGS + ["~", "~unknown"])
@pytest.mark.parametrize("payload", ["x", [1, 2], {"~s": []}, None])
def test_look_alike_dicts_stay_dicts(tag: str, payload: Any) -> None:
    value = {tag: payload}
    assert_same(round_trip(value), value)
    assert_same(round_trip([value, {"nested": value}]), [value, {"nested": value}])


def test_multi_key_dicts_with_tag_names_are_plain_objects() -> None:
    value = {"~s": [1], "~k": "x"}
    assert dumps(value) == '{"~s":[1],"~k":"x"}'
    assert_same(round_trip(value), value)


@pytest.mark.parametrize("text", ["1.10", "1.1", "-0", "0E-7", "1E+2", "100", "3.14159265358979323846264338327950288",
                                  "NaN", "-sNaN", "Infinity", "-Infinity", "123456789012345678901234567890e-40"])
def test_decimal_keeps_exact_digits(text: str) -> None:
    back = round_trip(decimal.Decimal(text))
    assert type(back) is decimal.Decimal and str(back) == str(decimal.Decimal(text))
    assert str(round_trip([decimal.Decimal("1.10"), decimal.Decimal("1.1")])[0]) == "1.10"


@pytest.mark.parametrize("value", [10**5000, -(10**5000) - 7, 2**1024, -(2**1024), 2**1024 - 1, 2**63, -(2**63)],
                         ids=lambda v: f"{'-' if v < 0 else ''}{v.bit_length()}bits")
def test_ints_of_any_size(value: int) -> None:
    assert_same(round_trip(value), value)
    assert_same(round_trip({value: [value]}), {value: [value]})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1])
def test_floats_including_non_finite(value: float) -> None:
    assert_same(round_trip(value), value)


def test_non_str_dict_keys_keep_their_types() -> None:
    key = db.Key("K", 1, project="p")
    value = {1: "int", "1": "str", 2.5: "float", (1, "a"): "tuple", None: "none",
             frozenset({1}): "frozenset", key: "key", decimal.Decimal("1.10"): "dec",
             datetime.date(2026, 1, 1): "date", b"\x00": "bytes"}
    assert_same(round_trip(value), value)


def test_complete_key_travels_as_its_urlsafe_string() -> None:
    key = db.Key("Parent", "p1", "Child", 42, project="p", namespace="ns")
    assert json.loads(dumps(key)) == {"~k": key.to_urlsafe()}
    assert_same(round_trip(key), key)


@pytest.mark.parametrize("key", [
    db.Key("K", project="p"),                                  # partial
    db.Key("K", 1, project="p", namespace=""),                 # "" would come back as None from the string form
    db.Key("K", 1, project="p", database="other"),             # the string form knows no database
    db.Key("K", 0, "C", "", project="p"),                      # ids/names the string form cannot hold
    db.Key("K", "\udc80", project="p"),                        # a lone surrogate
], ids=["partial", "empty-namespace", "database", "zero-id", "surrogate"])
def test_keys_the_urlsafe_form_cannot_express_still_round_trip(key: db.Key) -> None:
    assert_same(round_trip(key), key)


def test_library_keys_and_entities_come_back_as_core_db_classes() -> None:
    lib_key = datastore.Key("K", "a", project="p")
    inner = datastore.Entity(datastore.Key("Inner", 2, project="p"))
    inner["k"] = lib_key
    outer = datastore.Entity(lib_key, exclude_from_indexes=("blob",))
    outer.update({"blob": b"\x01", "inner": inner, "keys": [lib_key], "when": datetime.date(2026, 1, 1)})
    back = round_trip(outer)
    assert type(back) is db.Entity and type(back.key) is db.Key
    assert type(back["inner"]) is db.Entity and type(back["inner"]["k"]) is db.Key
    assert type(back["keys"][0]) is db.Key
    assert back == outer and back.exclude_from_indexes == {"blob"}


def test_entity_properties_that_look_like_tags_stay_properties() -> None:
    entity = db.Entity(db.Key("K", 1, project="p"))
    entity["~s"] = [1]
    assert_same(round_trip(entity), entity)


def test_ten_thousand_ints_round_trip_compactly() -> None:
    value = list(range(10_000))
    assert dumps(value) == json.dumps(value, separators=(",", ":"))
    assert loads(dumps(value)) == value


# --- refusals ---------------------------------------------------------------------------------------

class Foo:
    pass


class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


def _generator() -> Any:
    yield 1


@pytest.mark.parametrize(("value", "root", "message"), [
    (Foo(), "$", "cannot serialize object of type Foo at $"),
    ([1, Foo()], "$", "type Foo at $[1]"),
    ([1, {"user": {"items": [0, Foo()]}}], "args", "type Foo at args[1]['user']['items'][1]"),
    ((1, 2, (3, Foo())), "$", "type Foo at $[2][1]"),
    ({1: {2: Foo()}}, "kwargs", "type Foo at kwargs[1][2]"),
    ({Foo(): 1}, "$", "type Foo at $.keys[0]"),
    ({"a": 1, "b": {Foo()}}, "$", "type Foo at $['b'].members[0]"),
    (frozenset({Foo()}), "$", "type Foo at $.members[0]"),
    ({"~s": Foo()}, "$", "type Foo at $['~s']"),
    (_generator(), "$", "type generator at $"),
    ([print], "$", "type builtin_function_or_method at $[0]"),
    ([lambda: 1], "$", "type function at $[0]"),
    (bytearray(b"x"), "$", "type bytearray at $"),
    ({"c": Color.RED}, "$", "type Color (a subclass of int; only the exact type round-trips) at $['c']"),
    (collections.OrderedDict(a=1), "$", "type OrderedDict (a subclass of dict"),
    (Point(1, 2), "$", "type Point (a subclass of tuple"),
    (object(), "$", "type object at $"),
])
def test_unsupported_values_name_type_and_location(value: Any, root: str, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        dumps(value, path=root)
    assert message in str(caught.value)
    with pytest.raises(TypeError) as again:
        check_serializable(value, path=root)
    assert str(again.value) == str(caught.value)


def test_location_with_an_unprintable_key() -> None:
    with pytest.raises(TypeError, match=r"type Foo at \$\[<int>\]"):
        dumps({10**5000: Foo()})


def test_entity_property_location_is_named() -> None:
    entity = db.Entity(db.Key("K", 1, project="p"))
    entity["items"] = [Foo()]
    with pytest.raises(TypeError, match=r"type Foo at args\[0\]\['items'\]\[0\]"):
        dumps([entity], path="args")


def test_circular_structures_are_refused_with_their_location() -> None:
    value: list[Any] = [1, {"a": []}]
    value[1]["a"].append(value)
    with pytest.raises(TypeError, match=r"cannot serialize a list that contains itself at \$\[1\]\['a'\]\[0\]"):
        dumps(value)
    entity = db.Entity()
    entity["self"] = [entity]
    with pytest.raises(TypeError, match=r"an Entity that contains itself at \$\['self'\]\[0\]"):
        dumps(entity)


def test_too_deep_nesting_is_a_type_error() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(TypeError, match="nested too deeply"):
        dumps(value, path="args")


def test_shared_but_not_circular_values_are_fine() -> None:
    shared = [1, 2]
    assert_same(round_trip([shared, shared, {"a": shared}]), [shared, shared, {"a": shared}])


def test_check_serializable_accepts_supported_values() -> None:
    assert check_serializable([db.Key("K", 1, project="p"), {1: (b"", set())}]) is None


def test_stdlib_entry_point_refuses_too() -> None:
    with pytest.raises(TypeError, match=r"type Foo at \$\[0\]"):
        json.dumps([Foo()], cls=JsonKeyEncoder)


@pytest.mark.parametrize("text", [
    '{"~nope": 1}', '{"~b": 5}', '{"~b": "###"}', '{"~td": 1.5}', '{"~td": true}', '{"~tu": "abc"}',
    '{"~s": [[1]]}', '{"~k": "garbage"}', '{"~k": ["p", null, null]}', '{"~dec": "one"}', '{"~u": "xyz"}',
    '{"~f": "NaN"}', '{"~i": "zz"}', '{"~m": [[1]]}', '{"~m": [[[1], 2]]}', '{"~e": [null]}', '{"~dt": "yesterday"}',
    '{"~d": 20260101}', '{"~t": ["12:00", "No/Such_Zone", 0]}', 'not json',
])
def test_malformed_input_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_plain_json_passes_through_the_hook() -> None:
    text = '{"a": [1, {"b": null}], "c": {"x": 1, "y": 2}}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("micros", [1, -1, 999_999, -500_000])
def test_offsets_under_one_second_survive(micros: int) -> None:
    tz = datetime.timezone(datetime.timedelta(microseconds=micros))
    for value in (datetime.datetime(2026, 1, 1, 12, tzinfo=tz), datetime.time(12, 0, 0, 5, tzinfo=tz)):
        back = round_trip(value)
        assert back.utcoffset() == datetime.timedelta(microseconds=micros)
        assert_same(back, value)


def test_the_error_carries_reason_and_location_apart_so_a_caller_can_name_the_root() -> None:
    from core.json import SerializationError

    with pytest.raises(SerializationError) as caught:
        dumps({"a": [1, {Foo()}]}, path="args")
    error = caught.value
    assert isinstance(error, TypeError)
    assert (error.reason, error.root, error.location) == (
        "cannot serialize object of type Foo", "args", "['a'][1].members[0]")
    assert str(error) == "cannot serialize object of type Foo at args['a'][1].members[0]"
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(SerializationError) as deep:
        check_serializable(nested, path="x")
    assert (deep.value.reason, deep.value.location, str(deep.value)) == (
        "nested too deeply to serialize", "", "cannot serialize x: nested too deeply")


# --- geo points ------------------------------------------------------------------------------------

@pytest.mark.parametrize("point", [GeoPoint(52.52, 13.405), GeoPoint(-90.0, 180.0), GeoPoint(0.0, -0.0),
                                   GeoPoint(1e-300, 0.1)], ids=repr)
def test_a_geo_point_round_trips_alone_and_inside_entities(point: Any) -> None:
    text = json.dumps(point, cls=JsonKeyEncoder)
    back = json.loads(text, object_hook=jsonDecodeObjectHook)
    assert type(back) is GeoPoint and back == point
    assert math.copysign(1, back.longitude) == math.copysign(1, point.longitude)  # -0.0 stays -0.0
    entity = db.Entity(db.Key("Shop", 1, project="p"))
    entity.update({"where": point, "history": [point, GeoPoint(1.0, 2.0)]})
    again = loads(dumps({"shop": entity}))["shop"]
    assert again == entity and type(again["where"]) is GeoPoint


@pytest.mark.parametrize("payload", ['{"~g":[1]}', '{"~g":"1,2"}', '{"~g":[true,1.0]}', '{"~g":[1,"2"]}',
                                     '{"~g":[1,2,3]}'])
def test_a_malformed_geo_point_is_a_value_error(payload: str) -> None:
    with pytest.raises(ValueError, match="~g"):
        loads(payload)
