"""Keys, entities, reads and writes, transactions: the heart of :mod:`core.db`.

- :class:`Key` and :class:`Entity` are the library's classes with a URL-safe string form. A key
  made without a project (``Key("invoice", 5)``, as ViUR code writes it) takes the project and
  namespace of the current store (:mod:`core.db.store`: the app's in its contexts; none outside
  them); with a ``parent`` it takes the parent's.
- ``get``/``put``/``delete`` take one value or a list; multi-writes are chunked to 500 mutations
  per commit (the emulator accepts more, production refuses).
- :func:`run_in_transaction` retries on contention and runs ``on_commit`` callbacks only after a
  successful commit (the transactional outbox of deferred calls builds on this).
- :func:`get_versioned`, :func:`put_versioned` and :func:`put_if_unchanged` are optimistic
  concurrency without a transaction: a write that names the version it was based on is refused
  when the entity changed since, in one round trip (a transaction takes a lookup and a commit).

Importing it registers keys, entities and geo points with :mod:`core.json` (:mod:`core.db.tags`).
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore import helpers
from google.cloud.datastore_v1.types import datastore as datastore_pb
from google.cloud.datastore_v1.types import entity as entity_pb

from core import json as tagged_json
from core.db.store import get_datastore
from core.db.tags import EntityTag, GeoPointTag, KeyTag

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Production refuses commits with more mutations than this.
MAX_MUTATIONS_PER_COMMIT = 500
#: Datastore integers are 64-bit: a larger value cannot be stored.
INT64_MAX = 2 ** 63 - 1
#: Entities asked for per query call when paging (the emulator caps a call at 300).
DEFAULT_PAGE_SIZE = 500

#: A geographical point property (latitude, longitude), as the library stores it.
GeoPoint = datastore.helpers.GeoPoint


class KeyError_(ValueError):
    """A key string that cannot be parsed."""

    __module__ = "core.db"  # the name users know it by (db.KeyError_), as before core.db was a package


class TransactionFailedError(RuntimeError):
    """A transaction kept colliding with others and gave up after its retries."""

    __module__ = "core.db"  # the name users know it by (db.TransactionFailedError), as before core.db was a package


class Key(datastore.Key):
    """A Datastore key with a URL-safe string form (``str(key)``) that round-trips.

    Without ``project`` and ``parent`` the key belongs to the current store (:func:`get_datastore`:
    the app's in its context): its project, and its namespace unless one is given.
    """

    __module__ = "core.db"  # the name users know it by (db.Key), as before core.db was a package

    def __init__(self, *path_args: Any, **kwargs: Any) -> None:
        if kwargs.get("project") is None and kwargs.get("parent") is None:
            store = get_datastore()
            kwargs["project"] = store.project
            if kwargs.get("namespace") is None:
                kwargs["namespace"] = store.namespace
        super().__init__(*path_args, **kwargs)

    def to_urlsafe(self) -> str:
        if self.is_partial:
            raise ValueError(f"a partial key has no string form: {self!r}")
        return self.to_legacy_urlsafe().decode("ascii")

    @classmethod
    def from_urlsafe(cls, value: str | bytes) -> Key:
        """Parse :meth:`to_urlsafe`'s output; anything else raises :class:`KeyError_`."""
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if not isinstance(value, str) or not value:
            raise KeyError_(f"not a key string: {value!r}")
        try:
            key = cls.from_legacy_urlsafe(value)
        except Exception as exc:  # the library raises DecodeError, ValueError, TypeError, ...
            raise KeyError_(f"malformed key string {value!r}: {exc}") from None
        if not key.flat_path or key.is_partial:
            raise KeyError_(f"malformed key string {value!r}: incomplete path")
        return key

    @classmethod
    def from_library(cls, key: datastore.Key) -> Key:
        if type(key) is cls:
            return key
        return cls(*key.flat_path, project=key.project, namespace=key.namespace, database=key.database)

    def _clone(self) -> Key:
        return Key.from_library(super()._clone())

    def completed_key(self, id_or_name: int | str) -> Key:
        return Key.from_library(super().completed_key(id_or_name))

    @property
    def parent(self) -> Key | None:  # type: ignore[override]
        parent = super().parent
        return None if parent is None else Key.from_library(parent)

    def __str__(self) -> str:
        return self.to_urlsafe() if not self.is_partial else repr(self)


class Entity(datastore.Entity):
    """A Datastore entity: a dict of properties plus its :class:`Key`."""

    __module__ = "core.db"  # the name users know it by (db.Entity), as before core.db was a package

    def __init__(self, key: datastore.Key | None = None, exclude_from_indexes: Iterable[str] = ()) -> None:
        super().__init__(key=None if key is None else Key.from_library(key),
                         exclude_from_indexes=tuple(exclude_from_indexes))


# Keys and entities (ours and the library's) travel in task payloads as the ``~k`` and ``~e`` tags.
_key_tag = KeyTag(Key, datastore.Key)
tagged_json.register(_key_tag)
tagged_json.register(EntityTag(Entity, datastore.Entity, _key_tag))
tagged_json.register(GeoPointTag(GeoPoint))


def _wrap_value(value: Any) -> Any:
    if isinstance(value, datastore.Key):
        return Key.from_library(value)
    if isinstance(value, datastore.Entity):
        return _wrap_entity(value)
    if isinstance(value, list):
        return [_wrap_value(v) for v in value]
    return value


def _wrap_entity(entity: datastore.Entity) -> Entity:
    if type(entity) is Entity:
        return entity
    wrapped = Entity(entity.key, exclude_from_indexes=entity.exclude_from_indexes)
    for name, value in entity.items():
        dict.__setitem__(wrapped, name, _wrap_value(value))
    return wrapped


@dataclasses.dataclass
class _TransactionState:
    transaction: datastore.Transaction
    callbacks: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    mutations: int = 0


_transaction_state: contextvars.ContextVar[_TransactionState | None] = contextvars.ContextVar(
    "core_db_transaction", default=None)


def key(*path: Any, namespace: str | None = None, parent: Key | None = None) -> Key:
    """A key in the current store's project: ``db.key("invoice", 12)``."""
    if parent is not None:
        return Key(*path, parent=parent)
    store = get_datastore()
    return Key(*path, project=store.project, namespace=namespace if namespace is not None else store.namespace)


# --- reads and writes -------------------------------------------------------------------------

@overload
def get(keys: datastore.Key) -> Entity | None: ...
@overload
def get(keys: Sequence[datastore.Key]) -> list[Entity | None]: ...


def get(keys: datastore.Key | Sequence[datastore.Key]) -> Entity | None | list[Entity | None]:
    """Fetch one entity (``None`` if missing) or a list in the order of ``keys``."""
    client = get_datastore().client
    if isinstance(keys, datastore.Key):
        found = client.get(keys)
        return None if found is None else _wrap_entity(found)
    key_list = list(keys)
    if not key_list:
        return []
    by_key = {e.key: _wrap_entity(e) for e in client.get_multi(key_list)}
    return [by_key.get(k) for k in key_list]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _count_mutations(count: int) -> None:
    state = _transaction_state.get()
    if state is None:
        return
    state.mutations += count
    if state.mutations > MAX_MUTATIONS_PER_COMMIT:
        raise ValueError(f"a transaction may write at most {MAX_MUTATIONS_PER_COMMIT} entities "
                         f"(production refuses larger commits); this one tried {state.mutations}")


def _write(items: Sequence[Any], write: Callable[[Sequence[Any]], Any]) -> None:
    """``write`` the mutations: into the current transaction, else in commits of at most 500."""
    _count_mutations(len(items))
    if _transaction_state.get() is not None:
        write(items)
    else:
        for chunk in _chunks(items, MAX_MUTATIONS_PER_COMMIT):
            write(chunk)


def put(entities: datastore.Entity | Sequence[datastore.Entity]) -> None:
    """Write one entity or many; keys of new entities are completed in place.

    Outside a transaction large lists are written in commits of at most 500 entities.
    """
    client = get_datastore().client
    items = [entities] if isinstance(entities, datastore.Entity) else list(entities)
    for item in items:
        if not isinstance(item, datastore.Entity):
            raise TypeError(f"db.put takes entities, got {type(item).__name__}")
    _write(items, client.put_multi)
    for item in items:
        if item.key is not None and type(item.key) is not Key:
            item.key = Key.from_library(item.key)


def delete(keys: datastore.Key | Sequence[datastore.Key]) -> None:
    """Delete one key or many (chunked like :func:`put`)."""
    client = get_datastore().client
    items = [keys] if isinstance(keys, datastore.Key) else list(keys)
    _write(items, client.delete_multi)


def allocate_ids(incomplete_key: datastore.Key, count: int) -> list[Key]:
    return [Key.from_library(k) for k in get_datastore().client.allocate_ids(incomplete_key, count)]


# --- optimistic writes, without a transaction --------------------------------------------------

#: The version :func:`get_versioned` gives a missing entity: :func:`put_if_unchanged` then inserts.
ABSENT = 0


def _outside_transaction(what: str) -> datastore.Client:
    if _transaction_state.get() is not None:
        raise RuntimeError(f"db.{what} works outside a transaction (its version is known only at the commit)")
    return get_datastore().client


def get_versioned(key: datastore.Key) -> tuple[Entity | None, int]:
    """One lookup: the entity (``None`` if missing) and its version (:data:`ABSENT` if missing)."""
    client = _outside_transaction("get_versioned")
    request = {"project_id": client.project, "keys": [key.to_protobuf()]}
    helpers.set_database_id_to_request(request, client.database)
    response = client._datastore_api.lookup(request=request)
    if not response.found:
        return None, ABSENT
    found = response.found[0]
    return _wrap_entity(helpers.entity_from_protobuf(found.entity)), found.version


_RawEntity, _RawKey = entity_pb.Entity.pb(), entity_pb.Key.pb()
_RawCommit = datastore_pb.CommitRequest.pb()


def _key_protobuf(key: datastore.Key) -> Any:
    """``key.to_protobuf()``, raw (the library's copies its path and goes through proto-plus)."""
    pb = _RawKey()
    partition = pb.partition_id
    partition.project_id = key.project
    if key.database:
        partition.database_id = key.database
    if key.namespace:
        partition.namespace_id = key.namespace
    flat = key.flat_path
    for index in range(0, len(flat), 2):
        element = pb.path.add()
        element.kind = flat[index]
        if index + 1 < len(flat):
            if isinstance(flat[index + 1], str):
                element.name = flat[index + 1]
            else:
                element.id = flat[index + 1]
    return pb


def entity_protobuf(entity: datastore.Entity) -> Any:
    """``entity`` as the raw protobuf the library's ``entity_to_protobuf`` makes, four times faster.

    Nulls, booleans, integers, floats, strings, datetimes and lists of strings are written here
    (what small bookkeeping entities such as task records hold); anything else, and an entity
    read with meanings, goes through the library.
    """
    if getattr(entity, "_meanings", None):
        return helpers.entity_to_protobuf(entity)._pb
    pb = _RawEntity()
    pb.key.CopyFrom(_key_protobuf(entity.key))
    excluded, properties = entity.exclude_from_indexes, pb.properties
    for name, value in entity.items():
        value_pb = properties[name]
        if value is None:
            value_pb.null_value = 0
        elif isinstance(value, bool):
            value_pb.boolean_value = value
        elif isinstance(value, int) and -2 ** 63 <= value <= INT64_MAX:
            value_pb.integer_value = value
        elif isinstance(value, float):
            value_pb.double_value = value
        elif isinstance(value, str):
            value_pb.string_value = value
        elif isinstance(value, datetime.datetime):
            value_pb.timestamp_value.FromDatetime(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            value_pb.array_value.SetInParent()
            items = value_pb.array_value.values
            for item in value:
                item_pb = items.add()
                item_pb.string_value = item
                if name in excluded:
                    item_pb.exclude_from_indexes = True
            continue
        else:
            return helpers.entity_to_protobuf(entity)._pb
        if name in excluded:
            value_pb.exclude_from_indexes = True
    return pb


def _commit_one(client: datastore.Client, entity: Any, *, insert: bool = False,
                base_version: int | None = None) -> Any:
    """Commit one write of the raw ``entity`` protobuf outside a transaction; its raw ``MutationResult``."""
    request = _RawCommit(project_id=client.project, mode=datastore_pb.CommitRequest.Mode.NON_TRANSACTIONAL)
    if client.database:
        request.database_id = client.database
    mutation = request.mutations.add()
    (mutation.insert if insert else mutation.upsert).CopyFrom(entity)
    if base_version is not None:
        mutation.base_version = base_version
    response = client._datastore_api.commit(request=datastore_pb.CommitRequest.wrap(request))
    return response._pb.mutation_results[0]


def _complete(entity: datastore.Entity, what: str) -> None:
    if entity.key is None or entity.key.is_partial:
        raise ValueError(f"db.{what} writes an entity with a complete key, got {entity.key!r}")


def put_versioned(entity: datastore.Entity) -> int | None:
    """Write ``entity`` (one commit, like :func:`put`) and return the version it got.

    Inside a transaction it joins the transaction like :func:`put` and returns ``None``: the
    version is known only when the transaction commits.
    """
    _complete(entity, "put_versioned")
    if _transaction_state.get() is not None:
        put(entity)
        return None
    client = get_datastore().client
    return _commit_one(client, entity_protobuf(entity)).version


def put_if_unchanged(entity: datastore.Entity, version: int) -> int | None:
    """Write ``entity`` if it is stored at ``version`` still (:data:`ABSENT`: if it is not stored).

    Returns the new version, or ``None`` when another write came first (nothing was written):
    read it again and decide anew.
    """
    _complete(entity, "put_if_unchanged")
    client = _outside_transaction("put_if_unchanged")
    entity_pb = entity_protobuf(entity)
    if version == ABSENT:
        try:
            return _commit_one(client, entity_pb, insert=True).version
        except gexc.AlreadyExists:
            return None
    try:
        result = _commit_one(client, entity_pb, base_version=version)
    except gexc.NotFound:  # deleted since (what an update of a missing entity answers)
        return None
    return None if result.conflict_detected else result.version


# --- transactions -----------------------------------------------------------------------------

def is_in_transaction() -> bool:
    return _transaction_state.get() is not None


def on_commit(callback: Callable[[], None]) -> None:
    """Run ``callback`` after the current transaction commits (at once outside a transaction).

    Callbacks of a transaction that rolls back never run. A failing callback is logged and does
    not undo the commit.
    """
    state = _transaction_state.get()
    if state is None:
        callback()
    else:
        state.callbacks.append(callback)


def run_in_transaction(func: Callable[..., T], *args: Any, retries: int = 4, **kwargs: Any) -> T:
    """Run ``func`` in a transaction, retrying it when the commit collides with another.

    Called inside a transaction, ``func`` joins the outer one. Exceptions from ``func`` roll back
    and propagate; ``on_commit`` callbacks run only after a successful commit.
    """
    if _transaction_state.get() is not None:
        return func(*args, **kwargs)
    client = get_datastore().client
    for attempt in range(retries + 1):
        # Begun by its first read (one RPC less than a separate BeginTransaction).
        transaction = client.transaction(begin_later=True)
        state = _TransactionState(transaction)
        token = _transaction_state.set(state)
        try:
            with transaction:
                result = func(*args, **kwargs)
        except (gexc.Aborted, gexc.Conflict) as exc:
            if attempt >= retries:
                raise TransactionFailedError(f"transaction gave up after {retries + 1} attempts: {exc}") from exc
            time.sleep(min(1.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
            continue
        finally:
            _transaction_state.reset(token)
        for callback in state.callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_commit callback %r failed", callback)
        return result
    raise AssertionError("unreachable")

