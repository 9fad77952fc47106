"""Count the RPCs the active Datastore client sends to the server (tests and benchmarks)."""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core import db

METHODS = ("lookup", "commit", "begin_transaction", "rollback", "run_query", "run_aggregation_query",
           "allocate_ids", "reserve_ids")


class RpcCounter:
    """Counts calls, by method, made while :meth:`counting` is active."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    @contextmanager
    def counting(self) -> Iterator[RpcCounter]:
        api = db.get_datastore().client._datastore_api
        originals = {name: getattr(api, name) for name in METHODS}
        for name, original in originals.items():
            setattr(api, name, self._counting(name, original))
        try:
            yield self
        finally:
            for name in originals:
                delattr(api, name)  # back to the class's method

    def _counting(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return original(*args, **kwargs)
        return call

    def take(self) -> int:
        """Calls since the last ``take`` (and forget them)."""
        total = sum(self.calls.values())
        self.calls.clear()
        return total
