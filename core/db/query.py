"""Queries: :class:`Query` and its pages, counting matches, pages from a visitor's cursor, key samples.

:class:`Query` pages by cursor: the emulator answers at most 300 entities per call, so a short page
never means the end. Counting: production Datastore answers ``RunAggregationQuery`` from the index
in one call. The Cloud Datastore emulator does not implement it (it answers 501 Unimplemented), so
there the matches are counted by a keys-only scan, page by page: exact, only slower on large kinds.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import datastore

from core.db.entities import DEFAULT_PAGE_SIZE, Entity, Key, _wrap_entity
from core.db.store import get_datastore

log = logging.getLogger(__name__)

_OPERATORS = {"=": "=", "==": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
              "!=": "!=", "in": "IN", "not in": "NOT_IN", "not_in": "NOT_IN"}
#: Operators the server expands into several scans: a cursor can't resume such a query.
_MULTI_QUERY_OPERATORS = {"!=", "IN", "NOT_IN"}


def _encode_cursor(cursor: bytes | None) -> str | None:
    return None if cursor is None else base64.urlsafe_b64encode(cursor).decode("ascii")


def _decode_cursor(cursor: str | bytes | None) -> bytes | None:
    if cursor is None or isinstance(cursor, bytes):
        return cursor
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"malformed cursor {cursor!r}") from exc


@dataclasses.dataclass
class QueryPage:
    """One page of results and the cursor after it (``None`` when the query is exhausted)."""

    __module__ = "core.db"  # the name users know it by (db.QueryPage), as before core.db was a package

    entities: list[Entity]
    cursor: str | None

    @property
    def more(self) -> bool:
        return self.cursor is not None


class Query:
    """A Datastore query: ``Query("invoice").filter("year =", 2026).order("-total")``."""

    __module__ = "core.db"  # the name users know it by (db.Query), as before core.db was a package

    def __init__(self, kind: str | None, *, namespace: str | None = None) -> None:
        self.kind = kind
        self.namespace = namespace
        self.filters: list[tuple[str, str, Any]] = []
        self.orders: list[str] = []
        self.ancestor_key: Key | None = None
        self.limit_count: int | None = None
        self.start_cursor: str | None = None
        self.end_cursor: str | None = None
        self.only_keys = False

    def filter(self, prop_op: str, *rest: Any) -> Query:
        """``filter("year =", 2026)`` (ViUR style) or ``filter("year", "=", 2026)``."""
        if len(rest) == 1:
            name, _, op = prop_op.strip().partition(" ")
            value = rest[0]
            op = op.strip() or "="
        elif len(rest) == 2:
            name, op, value = prop_op, rest[0], rest[1]
        else:
            raise TypeError("filter takes ('prop op', value) or ('prop', 'op', value)")
        normal = _OPERATORS.get(str(op).strip().lower())
        if normal is None:
            raise ValueError(f"unknown filter operator {op!r} in filter on {name!r}; "
                             f"use one of {sorted(set(_OPERATORS))}")
        if normal in {"IN", "NOT_IN"} and not isinstance(value, (list, tuple)):
            raise ValueError(f"filter {name!r} {normal} needs a list of values, got {value!r}")
        self.filters.append((name.strip(), normal, value))
        return self

    def order(self, *props: str) -> Query:
        self.orders.extend(props)
        return self

    def ancestor(self, key: Key) -> Query:
        self.ancestor_key = key
        return self

    def limit(self, count: int | None) -> Query:
        self.limit_count = count
        return self

    def keys_only(self) -> Query:
        self.only_keys = True
        return self

    def set_cursor(self, start: str | None = None, end: str | None = None) -> Query:
        self.start_cursor, self.end_cursor = start, end
        return self

    @property
    def is_cursor_resumable(self) -> bool:
        """False for queries the server runs as several scans (IN, NOT_IN, !=)."""
        return not any(op in _MULTI_QUERY_OPERATORS for _, op, _ in self.filters)

    def _library_query(self) -> datastore.Query:
        store = get_datastore()
        query = store.client.query(kind=self.kind,
                                   namespace=self.namespace if self.namespace is not None else store.namespace)
        for name, op, value in self.filters:
            query.add_filter(filter=datastore.query.PropertyFilter(name, op, value))
        if self.orders:
            query.order = list(self.orders)
        if self.ancestor_key is not None:
            query.ancestor = self.ancestor_key
        if self.only_keys:
            query.keys_only()
        return query

    def fetch_page(self, page_size: int = DEFAULT_PAGE_SIZE, cursor: str | None = None) -> QueryPage:
        """Up to ``page_size`` entities from ``cursor`` (or the query's start cursor).

        The library keeps asking while the server says there are more, so a page is short only at
        the end of the results.
        """
        iterator = self._library_query().fetch(
            limit=page_size, start_cursor=_decode_cursor(cursor if cursor is not None else self.start_cursor),
            end_cursor=_decode_cursor(self.end_cursor))
        entities = [_wrap_entity(e) for e in iterator]
        next_cursor = iterator.next_page_token
        if len(entities) < page_size or next_cursor is None:
            return QueryPage(entities, None)
        return QueryPage(entities, _encode_cursor(next_cursor))

    def iter(self, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[Entity]:
        """Every result (up to the query's limit), fetched page by page by cursor."""
        remaining = self.limit_count
        cursor = self.start_cursor
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page = self.fetch_page(size, cursor)
            yield from page.entities
            if remaining is not None:
                remaining -= len(page.entities)
            if not page.more:
                return
            cursor = page.cursor

    __iter__ = iter

    def run(self, limit: int | None = None) -> list[Entity]:
        """All results as a list (at most ``limit``, else the query's limit)."""
        if limit is not None:
            self.limit_count = limit
        return list(self.iter())

    def get_entry(self) -> Entity | None:
        """The first result, or ``None``."""
        page = self.fetch_page(1)
        return page.entities[0] if page.entities else None

    def to_dict(self) -> dict[str, Any]:
        """A plain description (values encoded by ``core.json``) to rebuild the query elsewhere."""
        return {"kind": self.kind, "namespace": self.namespace,
                "filters": [[n, o, v] for n, o, v in self.filters], "orders": list(self.orders),
                "ancestor": self.ancestor_key, "limit": self.limit_count,
                "start_cursor": self.start_cursor, "end_cursor": self.end_cursor, "keys_only": self.only_keys}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Query:
        query = cls(data["kind"], namespace=data.get("namespace"))
        for name, op, value in data.get("filters", []):
            query.filter(name, op, value)
        query.orders = list(data.get("orders", []))
        query.ancestor_key = data.get("ancestor")
        query.limit_count = data.get("limit")
        query.start_cursor = data.get("start_cursor")
        query.end_cursor = data.get("end_cursor")
        query.only_keys = bool(data.get("keys_only"))
        return query

    def __repr__(self) -> str:
        return f"<Query {self.kind} filters={self.filters} orders={self.orders}>"


# --- for pages that show data ----------------------------------------------------------------

_ALIAS = "total"
_CURSOR_RE = re.compile(r"[A-Za-z0-9_=-]+")


def fetch_page(query: Query, page_size: int, cursor: str | None) -> QueryPage:
    """``query.fetch_page`` from a cursor that came from outside: a cursor that does not decode,
    or that the server refuses, raises :class:`ValueError` (a 400 for the caller to give)."""
    if cursor is not None and not _CURSOR_RE.fullmatch(cursor):
        raise ValueError(f"malformed cursor {cursor[:40]!r}")
    try:
        return query.fetch_page(page_size, cursor)
    except gexc.InvalidArgument as exc:
        raise ValueError(f"the cursor {cursor!r} does not belong to this list") from exc


def count(query: Query) -> int:
    """How many entities ``query`` matches (its limit and cursors are ignored)."""
    library_query = query._library_query()
    try:
        results = get_datastore().client.aggregation_query(library_query).count(alias=_ALIAS).fetch()
        for batch in results:
            for result in batch:
                if result.alias == _ALIAS:
                    return int(result.value)
        return 0
    except gexc.MethodNotImplemented:
        log.debug("COUNT aggregation unavailable (emulator?): counting %r by a keys-only scan", query)
    scan = Query.from_dict({**query.to_dict(), "keys_only": True, "limit": None,
                               "start_cursor": None, "end_cursor": None})
    return sum(1 for _ in scan.iter())


def scatter_sample(query: Query, size: int) -> list[Key] | None:
    """Up to ``size`` keys of ``query``'s kind (namespace, ancestor) in ``__scatter__`` order: a
    sample spread over the key space, for splitting it into ranges; ``None`` if the server refuses.

    Production Datastore keeps the scatter property on a sparse sample of each kind; the emulator
    answers the same query from about every second entity. The query's filters are not applied: a
    sort on ``__scatter__`` allows none.
    """
    sample = Query(query.kind, namespace=query.namespace).order("__scatter__").keys_only()
    if query.ancestor_key is not None:
        sample.ancestor(query.ancestor_key)
    try:
        return [entity.key for entity in sample.fetch_page(size).entities]
    except gexc.GoogleAPICallError as exc:
        log.info("no __scatter__ sample of %r (%s)", query, exc)
        return None
