"""Counting and pages from outside cursors, on the real emulator (which has no COUNT aggregation)."""
from __future__ import annotations

import base64

import pytest

from core import db
from core.db import query as db_query


def _things(count: int) -> list[db.Entity]:
    entities = []
    for n in range(1, count + 1):
        entity = db.Entity(db.key("thing", n))
        entity["even"] = n % 2 == 0
        entities.append(entity)
    return entities


def test_count_counts_every_match_past_the_emulators_page_limit(datastore):
    db.put(_things(777))
    assert db_query.count(db.Query("thing")) == 777
    assert db_query.count(db.Query("thing").filter("even =", True)) == 388
    assert db_query.count(db.Query("thing").filter("even =", True).limit(5)) == 388  # limits are ignored
    assert db_query.count(db.Query("nothing")) == 0


def test_fetch_page_turns_a_foreign_or_garbled_cursor_into_value_error(datastore):
    db.put(_things(12))
    page = db_query.fetch_page(db.Query("thing"), 5, None)
    assert len(page.entities) == 5 and page.more
    assert [e.key.id for e in db_query.fetch_page(db.Query("thing"), 5, page.cursor).entities] == [6, 7, 8, 9, 10]
    refused = base64.urlsafe_b64encode(base64.b64encode(bytes(range(40)))).decode()  # decodes; the server refuses it
    for cursor in ("QUJD", "aGVsbG8gd29ybGQh", "!!", refused):
        with pytest.raises(ValueError):
            db_query.fetch_page(db.Query("thing"), 5, cursor)
