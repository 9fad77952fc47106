"""A pipeline leaves out, per shape of task, the gated built-ins that task does not need."""
from __future__ import annotations

import dataclasses

from core.tasks.middleware import Gated, Pipeline, Shaping
from core.tasks.outcome import Outcome
from core.tasks.registry import Table


@dataclasses.dataclass
class Parcel:
    flags: frozenset[str]
    seen: list[str] = dataclasses.field(default_factory=list)


def passing(name: str):
    def step(parcel: Parcel, proceed) -> Outcome:
        parcel.seen.append(name)
        return proceed(parcel)
    return step


def run(parcel: Parcel, proceed) -> Outcome:
    parcel.seen.append("run")
    return Outcome(200, "ok")


def pipeline() -> Pipeline[Parcel]:
    table: Table = Table("middleware")
    table.add("outer", Gated(passing("outer"), "early"))  # before the shape is known: always passed
    table.add("decode", Shaping(passing("decode"), lambda parcel: parcel.flags))
    table.add("debounce", Gated(passing("debounce"), "debounce"))
    table.add("lifecycle", passing("lifecycle"))
    table.add("unique", Gated(passing("unique"), "unique"))
    table.add("run", run)
    return Pipeline(table)


def test_each_shape_passes_only_the_gated_middleware_it_needs_and_every_other_one():
    steps = pipeline()
    plain, unique, both = Parcel(frozenset()), Parcel(frozenset({"unique"})), Parcel(frozenset({"unique", "debounce"}))
    for parcel in (plain, unique, both, Parcel(frozenset())):
        assert steps(parcel).status == 200
    assert plain.seen == ["outer", "decode", "lifecycle", "run"]
    assert unique.seen == ["outer", "decode", "lifecycle", "unique", "run"]
    assert both.seen == ["outer", "decode", "debounce", "lifecycle", "unique", "run"]


def test_an_apps_own_middleware_runs_for_every_shape_in_its_place_beside_a_gated_one():
    steps = pipeline()
    steps.add(passing("mine"), before="unique", name="mine")
    plain, unique = Parcel(frozenset()), Parcel(frozenset({"unique"}))
    steps(plain)
    steps(unique)
    assert plain.seen == ["outer", "decode", "lifecycle", "mine", "run"]
    assert unique.seen == ["outer", "decode", "lifecycle", "mine", "unique", "run"]
    assert "unique" in steps.names() and "debounce" in steps.names()
