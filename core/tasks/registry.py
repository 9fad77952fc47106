"""Where task targets are registered, by stable name, in an object each app owns.

Decorators (``@callDeferred``, ``@PeriodicTask``, ...) run at import, before any app exists: they
*declare* their target in :data:`declarations`, an append-only record of the code (as Celery's
``shared_task`` list is). Each app's :class:`TaskRegistry` is built from it when the app is made
(:meth:`TaskRegistry.declared`) and follows declarations made later (a test module defining a task
after the app was built). The task kinds and tasks of the library itself are *built-ins*: every
app's registry gets them once, when its runtime is made (:meth:`TaskRegistry.install_builtins`).
A test gives an app its own registry; :func:`isolated_registry` sends the declarations of a block
to one registry instead of the record. The task handler finds targets by their registered name,
never by walking attributes.

Names are ``module.qualname`` (``shop.invoices.Invoices.recompute_totals``): stable across
processes and deploys as long as the code is not moved. Two different targets claiming one name
raise :class:`DuplicateTask` at import.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import weakref
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


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """A kind of task the pipeline runs: ``run(runtime, envelope, info)`` does one task of it.

    ``routes`` are the paths of ``/_tasks`` its tasks are pushed to; one sent elsewhere is a
    malformed task (a dead letter), not a run.
    """

    name: str
    run: Callable[..., Any]
    routes: tuple[str, ...]


#: The tables of a registry, by the name declarations use.
TABLES = ("deferred", "periodic", "startup", "callable", "query_iters", "kinds", "middleware")


class TaskRegistry:
    """Every registration of one app: deferred targets, periodic, startup, callable, query iters, kinds."""

    def __init__(self) -> None:
        self.deferred: Table[Any] = Table("deferred")
        self.periodic: Table[Any] = Table("periodic")
        self.startup: Table[Any] = Table("startup")
        self.callable: Table[Any] = Table("callable")
        self.query_iters: Table[Any] = Table("query iterator")
        #: The task kinds the pipeline runs (``deferred``, ``periodic``, ``queryIter``, ...).
        self.kinds: Table[TaskKind] = Table("kind")
        #: The built-in middleware of the task pipeline, outermost first (see :mod:`core.tasks.middleware`).
        self.middleware: Table[Any] = Table("middleware")
        self._builtins = False

    @classmethod
    def declared(cls) -> TaskRegistry:
        """A registry of everything the code declared, now and later (the default of an app)."""
        registry = cls()
        declarations.follow(registry, everything=True)
        return registry

    def table(self, name: str) -> Table[Any]:
        if name not in TABLES:
            raise ValueError(f"a registry has no table {name!r}")
        return getattr(self, name)  # type: ignore[no-any-return]

    def install_builtins(self) -> TaskRegistry:
        """Add the library's own kinds and tasks (once; the app's runtime does it when it is made)."""
        if not self._builtins:
            self._builtins = True
            declarations.follow(self, everything=False)
        return self


@dataclasses.dataclass(frozen=True)
class Declaration:
    table: str
    name: str
    value: Any
    same: Callable[[Any, Any], bool] | None
    builtin: bool
    #: A withdrawal (``removePeriodicTask``) instead of an addition.
    removed: bool = False


class Declarations:
    """The append-only record of what the code declared; registries that follow it get each entry."""

    def __init__(self) -> None:
        self._entries: list[Declaration] = []
        #: What is declared now, to refuse a second target under a name at its declaration.
        self._names = TaskRegistry()
        self._followers: weakref.WeakKeyDictionary[TaskRegistry, bool] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def add(self, table: str, name: str, value: Any, *, same: Callable[[Any, Any], bool] | None = None,
            builtin: bool = False) -> Any:
        """Declare ``value`` as ``name`` of ``table``; a second, different value under it raises."""
        redirect = _redirect.get()
        if redirect is not None and not builtin:
            return redirect.table(table).add(name, value, same=same)
        with self._lock:
            known = self._names.table(table)
            if known.find(name) is value:
                return value
            kept = known.add(name, value, same=same)
            if kept is not value:
                return kept
            entry = Declaration(table, name, value, same, builtin)
            self._entries.append(entry)
            for registry, everything in list(self._followers.items()):
                if everything or builtin:
                    _apply(registry, entry)
        return value

    def remove(self, table: str, name: str) -> None:
        """Withdraw a declaration (from the record and every registry that follows it)."""
        redirect = _redirect.get()
        if redirect is not None:
            redirect.table(table).remove(name)
            return
        with self._lock:
            if self._names.table(table).remove(name) is None:
                return
            entry = Declaration(table, name, None, None, False, removed=True)
            self._entries.append(entry)
            for registry, everything in list(self._followers.items()):
                if everything:
                    _apply(registry, entry)

    def find(self, table: str, name: str) -> Any | None:
        """What is declared as ``name`` right now (a registry in an isolated block first)."""
        redirect = _redirect.get()
        return (redirect if redirect is not None else self._names).table(table).find(name)

    def follow(self, registry: TaskRegistry, *, everything: bool) -> None:
        """Give ``registry`` the declarations so far and every later one (all, or the built-ins only)."""
        with self._lock:
            had = self._followers.get(registry)  # None: nothing yet, False: the built-ins, True: all
            if had is True or (had is False and not everything):
                return
            for entry in self._entries:
                if (entry.builtin and had is None) or (everything and not entry.builtin):
                    _apply(registry, entry)
            self._followers[registry] = everything


def _apply(registry: TaskRegistry, entry: Declaration) -> None:
    table = registry.table(entry.table)
    if entry.removed:
        table.remove(entry.name)
    else:
        table.add(entry.name, entry.value, same=entry.same)


#: What the code declared, in the order it was imported.
declarations = Declarations()

_redirect: contextvars.ContextVar[TaskRegistry | None] = contextvars.ContextVar("core_task_registry_redirect",
                                                                                 default=None)


def declare(table: str, name: str, value: Any, *, same: Callable[[Any, Any], bool] | None = None) -> Any:
    """Declare a target of the app code (decorators call this at import)."""
    return declarations.add(table, name, value, same=same)


def declare_builtin(table: str, name: str, value: Any) -> Any:
    """Declare a kind or task of the library itself: every app's registry gets it."""
    return declarations.add(table, name, value, builtin=True)


def declare_kind(name: str, run: Callable[..., Any], *routes: str) -> TaskKind:
    """Declare a built-in task kind: ``run(runtime, envelope, info)`` does one task pushed to ``routes``."""
    kind = TaskKind(name, run, tuple(routes))
    declare_builtin("kinds", name, kind)
    return kind


def redirected_registry() -> TaskRegistry | None:
    """The registry of the enclosing :func:`isolated_registry` block, if any."""
    return _redirect.get()


@contextlib.contextmanager
def isolated_registry(registry: TaskRegistry | None = None) -> Iterator[TaskRegistry]:
    """Declarations made in the block go to ``registry`` (a fresh one by default), not to the record.

    Tests define their tasks here and give the registry to their app (``make_app(registry=...)``).
    """
    fresh = registry if registry is not None else TaskRegistry()
    token = _redirect.set(fresh)
    try:
        yield fresh
    finally:
        _redirect.reset(token)
