"""Query helpers for pages that show data: counting matches, and pages from a visitor's cursor.

Counting: production Datastore answers ``RunAggregationQuery`` from the index in one call. The Cloud
Datastore emulator does not implement it (it answers 501 Unimplemented), so there the matches are
counted by a keys-only scan, page by page: exact, only slower on large kinds.
"""
from __future__ import annotations

import logging
import re

from google.api_core import exceptions as gexc

from core import db

log = logging.getLogger(__name__)

_ALIAS = "total"
_CURSOR_RE = re.compile(r"[A-Za-z0-9_=-]+")


def fetch_page(query: db.Query, page_size: int, cursor: str | None) -> db.QueryPage:
    """``query.fetch_page`` from a cursor that came from outside: a cursor that does not decode,
    or that the server refuses, raises :class:`ValueError` (a 400 for the caller to give)."""
    if cursor is not None and not _CURSOR_RE.fullmatch(cursor):
        raise ValueError(f"malformed cursor {cursor[:40]!r}")
    try:
        return query.fetch_page(page_size, cursor)
    except gexc.InvalidArgument as exc:
        raise ValueError(f"the cursor {cursor!r} does not belong to this list") from exc


def count(query: db.Query) -> int:
    """How many entities ``query`` matches (its limit and cursors are ignored)."""
    library_query = query._library_query()
    try:
        results = db.get_datastore().client.aggregation_query(library_query).count(alias=_ALIAS).fetch()
        for batch in results:
            for result in batch:
                if result.alias == _ALIAS:
                    return int(result.value)
        return 0
    except gexc.MethodNotImplemented:
        log.debug("COUNT aggregation unavailable (emulator?): counting %r by a keys-only scan", query)
    scan = db.Query.from_dict({**query.to_dict(), "keys_only": True, "limit": None,
                               "start_cursor": None, "end_cursor": None})
    return sum(1 for _ in scan.iter())


def scatter_sample(query: db.Query, size: int) -> list[db.Key] | None:
    """Up to ``size`` keys of ``query``'s kind (namespace, ancestor) in ``__scatter__`` order: a
    sample spread over the key space, for splitting it into ranges; ``None`` if the server refuses.

    Production Datastore keeps the scatter property on a sparse sample of each kind; the emulator
    answers the same query from about every second entity. The query's filters are not applied: a
    sort on ``__scatter__`` allows none.
    """
    sample = db.Query(query.kind, namespace=query.namespace).order("__scatter__").keys_only()
    if query.ancestor_key is not None:
        sample.ancestor(query.ancestor_key)
    try:
        return [entity.key for entity in sample.fetch_page(size).entities]
    except gexc.GoogleAPICallError as exc:
        log.info("no __scatter__ sample of %r (%s)", query, exc)
        return None
