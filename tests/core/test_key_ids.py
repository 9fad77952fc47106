"""The one check of ids from outside that are to name Datastore keys (``core.key_ids``)."""
from __future__ import annotations

import re

import pytest

from core.key_ids import MAX_INT_ID, MalformedId, key_id


@pytest.mark.parametrize("value", ["a", "x" * 1500, "é" * 750, " ", "__x", "x__", "_", "1"])
def test_possible_key_names_pass_unchanged(value):
    assert key_id(value, what="id") == value


@pytest.mark.parametrize("value", [None, "", "x" * 1501, "é" * 751, "__key__", "____", "\ud800"])
def test_impossible_key_names_are_malformed_with_a_message_naming_the_id(value):
    with pytest.raises(MalformedId, match="malformed run id") as caught:
        key_id(value, what="run id")
    assert caught.value.code == 400
    assert len(caught.value.description) < 200  # an over-long id is not echoed whole


@pytest.mark.parametrize("value, expected", [("1", 1), ("42", 42), (str(MAX_INT_ID), MAX_INT_ID)])
def test_numeric_ids(value, expected):
    assert key_id(value, what="id", numeric=True) == expected


@pytest.mark.parametrize("value", ["", "0", "007", "-1", "1.0", "1e3", " 1", str(MAX_INT_ID + 1), "9" * 40, "١٢"])
def test_impossible_numeric_ids(value):
    with pytest.raises(MalformedId):
        key_id(value, what="id", numeric=True)


def test_a_pattern_is_matched_in_full():
    pattern = re.compile(r"[0-9a-f]{4}")
    assert key_id("beef", what="id", pattern=pattern) == "beef"
    with pytest.raises(MalformedId):
        key_id("beefy", what="id", pattern=pattern)
