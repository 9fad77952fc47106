"""A thin, typed layer over google-cloud-datastore, in the way ViUR's ``db`` wraps it.

``from core import db`` and ``db.X`` are the way in; the rooms: :mod:`~core.db.entities` (keys,
entities, reads and writes, transactions; it registers their tagged-JSON form), :mod:`~core.db.query`
(:class:`Query` and its pages, counting, key samples), :mod:`~core.db.store` (the Datastore of the
current context) and :mod:`~core.db.tags` (the tagged-JSON form of keys, entities and geo points).

The client is built on first use from :class:`core.config.Settings`, never at import.
"""
from __future__ import annotations

from core.db.entities import (
    ABSENT,
    DEFAULT_PAGE_SIZE,
    INT64_MAX,
    MAX_MUTATIONS_PER_COMMIT,
    Entity,
    GeoPoint,
    Key,
    KeyError_,
    TransactionFailedError,
    allocate_ids,
    delete,
    get,
    get_versioned,
    is_in_transaction,
    key,
    on_commit,
    put,
    put_if_unchanged,
    put_versioned,
    run_in_transaction,
)
from core.db.query import Query, QueryPage
from core.db.store import Datastore, NoDatastore, bind, configure, get_datastore, unbind, using

__all__ = [
    "Key", "Entity", "GeoPoint", "Query", "QueryPage", "Datastore", "key", "get", "put", "delete", "allocate_ids",
    "get_versioned", "put_versioned", "put_if_unchanged", "ABSENT",
    "run_in_transaction", "is_in_transaction", "on_commit", "configure", "get_datastore", "bind", "unbind", "using",
    "NoDatastore",
    "KeyError_", "TransactionFailedError", "MAX_MUTATIONS_PER_COMMIT", "INT64_MAX", "DEFAULT_PAGE_SIZE",
]
