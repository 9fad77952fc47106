"""Where task targets are registered, by stable name, in an object tests can replace.

Decorators register into the *active* registry when the decorated code is imported. The app's
runtime keeps a reference to the registry that was active when the app was built, and the task
handler finds targets there by their registered name, never by walking attributes.

Names are ``module.qualname`` (``shop.invoices.Invoices.recompute_totals``): stable across
processes and deploys as long as the code is not moved. Two different targets claiming one name
raise :class:`DuplicateTask` at import.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from core.tasks.errors import DuplicateTask, TaskNotFound

V = TypeVar("V")


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a function or class, the stable name of a task target."""
    func = getattr(obj, "__func__", obj)
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname:
        raise TypeError(f"{obj!r} has no module/qualified name and cannot be a task target")
    if "<locals>" in qualname:
        raise TypeError(f"{module}.{qualname} is defined inside a function; task targets must be "
                        "importable by name (define it at module or class level)")
    return f"{module}.{qualname}"


class Table(Generic[V]):
    """One kind of registration: name → value, duplicates refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, V] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value: V, *, same: Callable[[V, V], bool] | None = None) -> V:
        """Register ``value``; re-registering an equal value is a no-op, another one raises."""
        with self._lock:
            existing = self._items.get(name)
            if existing is not None:
                if existing is value or (same is not None and same(existing, value)):
                    return existing
                raise DuplicateTask(f"two {self.kind} targets are named {name!r}")
            self._items[name] = value
            return value

    def get(self, name: str) -> V:
        try:
            return self._items[name]
        except KeyError:
            raise TaskNotFound(f"no {self.kind} task is registered as {name!r}") from None

    def find(self, name: str) -> V | None:
        return self._items.get(name)

    def remove(self, name: str) -> V | None:
        with self._lock:
            return self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, V]]:
        return list(self._items.items())

    def values(self) -> list[V]:
        return list(self._items.values())


class TaskRegistry:
    """Every registration of one app: deferred targets, periodic, startup, callable, query iters."""

    def __init__(self) -> None:
        self.deferred: Table[Any] = Table("deferred")
        self.periodic: Table[Any] = Table("periodic")
        self.startup: Table[Any] = Table("startup")
        self.callable: Table[Any] = Table("callable")
        self.query_iters: Table[Any] = Table("query iterator")


_active = TaskRegistry()
_active_lock = threading.Lock()


def active_registry() -> TaskRegistry:
    """The registry decorators register into right now."""
    return _active


def set_active_registry(registry: TaskRegistry) -> TaskRegistry:
    """Make ``registry`` active; returns the previous one."""
    global _active
    with _active_lock:
        previous, _active = _active, registry
    return previous


@contextlib.contextmanager
def isolated_registry(registry: TaskRegistry | None = None) -> Iterator[TaskRegistry]:
    """Register into a fresh registry inside the block (tests define their tasks here)."""
    fresh = registry or TaskRegistry()
    previous = set_active_registry(fresh)
    try:
        yield fresh
    finally:
        set_active_registry(previous)
