"""Splitting a query's key space into ranges, one per shard of a sharded run.

A query can be split when a key range can be added to it and the ranges together visit what the
query visits, each once: it orders by key (or not at all) and has no inequality filter on another
property (Datastore allows inequalities on one property only), no limit (it counts over the whole
query) and no cursor. The split points come from the kind's ``__scatter__`` sample
(:func:`core.db.query.scatter_sample`); where that sample is refused or too sparse for the shards
asked for (small kinds), from the query's own keys, read keys-only, whose quantiles are exact.
"""
from __future__ import annotations

import logging
from typing import Any

from core import db
from core.db import query as db_query

log = logging.getLogger(__name__)

KEY_PROPERTY = "__key__"
#: Scatter keys read per shard: more points make more even ranges.
OVERSAMPLING = 32
#: Keys read at most when the split falls back to the query's own keys (the rest goes to the last range).
MAX_SAMPLE_KEYS = 100_000
_INEQUALITIES = {"<", "<=", ">", ">="}

KeyRange = tuple[db.Key | None, db.Key | None]


def refusal(query: db.Query) -> str | None:
    """Why ``query`` cannot be split into key ranges, or ``None`` when it can."""
    if query.kind is None:
        return "a kindless query cannot be split"
    for order in query.orders:
        if order.lstrip("-+") != KEY_PROPERTY:
            return f"it is sorted by {order!r}; a sharded run visits key ranges and needs key order (or none)"
    for name, op, _ in query.filters:
        if op in _INEQUALITIES and name != KEY_PROPERTY:
            return (f"it has an inequality filter on {name!r}; Datastore allows inequalities on one property, "
                    "and a sharded run needs that to be the key")
    if query.limit_count is not None:
        return "it has a limit, which counts over the whole query, not per range"
    if query.start_cursor is not None or query.end_cursor is not None:
        return "it starts or ends at a cursor"
    return None


def key_order(key: db.Key) -> tuple[Any, ...]:
    """A sort key that orders keys as Datastore does: path element by element, a parent before its
    children, kind names by their text, numeric ids before names."""
    path = key.flat_path
    return tuple((path[i], 0, ident, "") if isinstance(ident := path[i + 1], int) else (path[i], 1, 0, ident)
                 for i in range(0, len(path), 2))


def split_points(query: db.Query, shards: int) -> list[db.Key]:
    """At most ``shards - 1`` distinct keys, ascending, that cut the query's key space into ranges."""
    if shards <= 1:
        return []
    sample = db_query.scatter_sample(query, shards * OVERSAMPLING)
    if sample is None or len(sample) < shards:
        keys_only = db.Query.from_dict({**query.to_dict(), "keys_only": True, "orders": []})
        sample = []
        for entity in keys_only.iter():
            sample.append(entity.key)
            if len(sample) >= MAX_SAMPLE_KEYS:
                log.warning("split of %r: only the first %d keys were sampled", query, MAX_SAMPLE_KEYS)
                break
    ordered = sorted(set(sample), key=key_order)
    points: list[db.Key] = []
    for i in range(1, shards):
        if not ordered:
            break
        point = ordered[i * len(ordered) // shards]
        if point not in points and (i * len(ordered) // shards) > 0:
            points.append(point)
    return points


def key_ranges(points: list[db.Key]) -> list[KeyRange]:
    """The ranges ``[lo, hi)`` between split points; ``None`` is open-ended. One range without points."""
    bounds: list[db.Key | None] = [None, *points, None]
    return list(zip(bounds[:-1], bounds[1:]))


def in_range(query: db.Query, lo: db.Key | None, hi: db.Key | None) -> db.Query:
    """``query`` narrowed to the keys ``lo <= key < hi``."""
    narrowed = db.Query.from_dict(query.to_dict())
    if lo is not None:
        narrowed.filter(KEY_PROPERTY, ">=", lo)
    if hi is not None:
        narrowed.filter(KEY_PROPERTY, "<", hi)
    return narrowed
