"""The query iterator classes and starting a run: what a user subclasses and calls."""
from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from core import db
from core import json as tagged_json
from core.clock import utc_now as now
from core.db import query as db_query
from core.tasks import aio, outbox, started
from core.tasks.context import capture_environment
from core.tasks.errors import ConfigurationError, DeferredArgumentError, TaskNotFound
from core.tasks.queryiter import split
from core.tasks.queryiter.runs import (
    MAX_RECORD_DATA_BYTES,
    MAX_SHARDS,
    RUNNING,
    SHARD_UNINDEXED,
    UNINDEXED,
    run_key,
    send_step,
    shard_key,
)
from core.tasks.registry import TaskRegistry, declare, qualified_name
from core.tasks.runtime import TaskRuntime, get_runtime

log = logging.getLogger(__name__)

#: Seconds of work per chunk unless the class or the settings say otherwise.
DEFAULT_CHUNK_SECONDS = 10.0
#: Entities asked for per page: large pages are what makes a cursor scan fast.
DEFAULT_PAGE_SIZE = 500


class MetaQueryIter(type):
    """Registers every query iterator class under a stable id (``module.qualname``).

    The id is declared in the ``query_iters`` table when the class is defined (every app's registry
    takes it), so any instance of the app that imported the code can run a chunk of any run. Classes defined
    inside functions cannot be found by name elsewhere and are refused here.
    """

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(name, bases, namespace, **kwargs)
        cls.iter_id = qualified_name(cls)
        aio.check_hooks(cls, ("handleEntry", "handleEntries", "handleFinish", "handleError"), "QueryIter hook")
        declare("query_iters", cls.iter_id, cls)


class QueryIter(metaclass=MetaQueryIter):
    """Run a query and process each entity it matches, in a chain of tasks.

    Subclass it, override the class methods ``handleEntry`` / ``handleFinish`` (and maybe
    ``handleError``), then call ``startIterOnQuery``. Keep no state on the class: chunks run in
    other processes; pass what they need as ``customData``.
    """

    # The package's name, not this room's: the id stored runs and steps refer to this class by.
    __module__ = "core.tasks.queryiter"
    #: Set by :class:`MetaQueryIter`: the id runs and tasks refer to this class by.
    iter_id: ClassVar[str]
    #: The queue the chain's tasks go to (``deploy/queue.yaml`` defines it for these chains).
    queueName: ClassVar[str] = "query-iter"  # noqa: N815 - ViUR's name
    #: Seconds of work per chunk; ``None`` takes the setting or :data:`DEFAULT_CHUNK_SECONDS`.
    chunkSeconds: ClassVar[float | None] = None  # noqa: N815
    #: Largest page fetched at once.
    pageSize: ClassVar[int] = DEFAULT_PAGE_SIZE  # noqa: N815
    #: Entities per chunk at most (``None``: as many as the budget allows; ViUR used 5).
    maxEntriesPerChunk: ClassVar[int | None] = None  # noqa: N815
    #: Seconds between progress commits inside a chunk (at page ends): what a crash can cost.
    checkpointSeconds: ClassVar[float] = 2.0  # noqa: N815
    #: Extra in-place attempts of a failing ``handleEntry`` before ``handleError`` is asked.
    entryRetries: ClassVar[int] = 0  # noqa: N815
    #: Run the query keys-only (entries are entities without properties).
    keysOnly: ClassVar[bool] = False  # noqa: N815
    #: A finish claim older than this is taken over by a retry (its holder is presumed dead).
    finishLease: ClassVar[datetime.timedelta] = datetime.timedelta(minutes=10)  # noqa: N815

    @classmethod
    def startIterOnQuery(cls, query: db.Query, customData: Any = None, shards: int = 1) -> str:  # noqa: N802, N803
        """Start iterating ``query`` on this class; returns the run id at once.

        The first chunk already runs as a task. ``customData`` must survive ``core.json``; a value
        that can't, or a query a cursor can't resume (IN, NOT_IN, !=), raises here. ``shards > 1``
        splits the key space into that many ranges, each its own chain of chunks, run in parallel;
        ``handleFinish`` still runs once, with the total. A query that can't be split raises here.
        """
        return start_run(cls, query, customData, shards=shards)

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        """Process one entity. If the query orders by a property you change here, the entity
        may be met again later (it can move behind the cursor)."""
        log.debug("handleEntry called on %s with %r", cls.iter_id, entry.key)

    #: Optional: handle many entries in one call (one batch write instead of one per entity). Used
    #: only when the class that defines ``handleEntry`` also defines this, so a subclass that
    #: overrides ``handleEntry`` alone keeps per-entity handling. A failing batch is handled again
    #: entity by entity, so ``handleError`` still sees single entries.
    handleEntries: ClassVar[Callable[[list[db.Entity], Any], None] | None] = None  # noqa: N815

    @classmethod
    def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        """Called once when the query is exhausted, with the number of entities met."""
        log.debug("handleFinish called on %s after %d entities", cls.iter_id, totalCount)

    @classmethod
    def handleError(cls, entry: db.Entity, customData: Any, exception: Exception) -> bool:  # noqa: N802, N803
        """``handleEntry`` failed on ``entry``: ``True`` goes on, ``False`` stops the run where it
        is (resumable). Raising ends the chunk; the queue retries it from this entity."""
        log.error("%s failed on %r: %r", cls.iter_id, entry.key, exception, exc_info=exception)
        return True


class DeleteEntitiesIter(QueryIter):
    """Delete every entity the query meets (low-level entities only: no relations, no locks)."""

    __module__ = "core.tasks.queryiter"  # the id stored runs refer to this class by

    keysOnly = True

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        db.delete(entry.key)

    @classmethod
    def handleEntries(cls, entries: list[db.Entity], customData: Any) -> None:  # type: ignore[override]  # noqa: N802, N803 - QueryIter declares it an optional hook (None: entry by entry)
        db.delete([entry.key for entry in entries])


def query_iter_class(iter_id: str, registry: TaskRegistry | None = None) -> type[QueryIter]:
    """The class registered as ``iter_id`` (raises :class:`TaskNotFound`)."""
    table = (registry or get_runtime().registry).query_iters
    found = table.get(iter_id)
    if not (isinstance(found, type) and issubclass(found, QueryIter)):
        raise TaskNotFound(f"{iter_id!r} is not a query iterator")
    return found


def batch_handler(cls: type[QueryIter]) -> Callable[[list[db.Entity], Any], None] | None:
    """``cls.handleEntries`` if the class defining ``handleEntry`` defines it too, else ``None``."""
    def owner(name: str) -> type | None:
        return next((c for c in cls.__mro__ if name in vars(c)), None)

    batch_owner = owner("handleEntries")
    if batch_owner is None or vars(batch_owner)["handleEntries"] is None or batch_owner is not owner("handleEntry"):
        return None
    return cls.handleEntries


# --- starting a run ---------------------------------------------------------------------------

def _encode_argument(value: Any, what: str, cls: type[QueryIter]) -> str:
    try:
        return tagged_json.dumps(value, path=what)
    except TypeError as exc:
        raise DeferredArgumentError(f"cannot start {cls.iter_id}: {exc}") from None


def start_run(cls: type[QueryIter], query: db.Query, custom_data: Any = None, *, shards: int = 1,
              runtime: TaskRuntime | None = None) -> str:
    """Create the run record of ``cls`` over ``query`` and queue its first step; returns the run id.

    Record and first task are written in one transaction (the task through the outbox), so a run
    exists if and only if its chain was started. With ``shards > 1`` the record, one shard record
    per key range and each range's first step are written in that one transaction.
    The first steps leave for the queue as the transaction commits, not when the caller's request
    ends; only then is the query counted for the run's progress (:func:`_note_total`), so the count
    (a whole scan where COUNT aggregations are missing, as on the emulator) runs beside the first
    chunks instead of before them, and the total is on the record when this returns.
    """
    runtime = runtime or get_runtime()
    if runtime.registry.query_iters.find(cls.iter_id) is not cls:
        raise ConfigurationError(f"{cls.iter_id} is not registered in this app's task registry")
    runtime.queues.require(cls.queueName, f"{cls.iter_id}.queueName")
    if not isinstance(query, db.Query):
        raise TypeError(f"startIterOnQuery needs a core.db.Query, got {type(query).__name__}")
    if not query.is_cursor_resumable:
        raise DeferredArgumentError(
            f"cannot start {cls.iter_id}: {query!r} uses IN, NOT_IN or != and a cursor cannot resume it; "
            "start one run per value instead")
    _check_shards(cls, query, shards)
    custom = _encode_argument(custom_data, "customData", cls)
    query_json = _encode_argument(query.to_dict(), "query", cls)
    env = capture_environment(runtime)
    env_json = _encode_argument(env, "environment", cls)
    size = len(custom) + len(query_json) + len(env_json)
    if size > MAX_RECORD_DATA_BYTES:
        raise DeferredArgumentError(f"cannot start {cls.iter_id}: customData, query and environment take {size} "
                                    f"bytes encoded, at most {MAX_RECORD_DATA_BYTES} fit in the run record")
    run_id = uuid.uuid4().hex
    started_at = now()
    record = db.Entity(run_key(run_id), exclude_from_indexes=UNINDEXED)
    record.update({
        "class": cls.iter_id, "kind": query.kind, "queue": cls.queueName, "query": query_json, "custom": custom,
        "env": env_json, "status": RUNNING, "generation": 0, "step": 0,
        "processed": 0, "errors": 0, "cursor": None, "done": "[]", "seconds_per_entry": 0.0, "total": None,
        "started": started_at, "updated": started_at, "finished": None, "finishing_since": None, "finish_token": None,
        "last_error": None,
    })
    chains: list[int | None] = [None]  # one chain, or one per shard
    if shards == 1:
        entities = [record]
    else:
        ranges = split.key_ranges(split.split_points(query, shards))
        record["shards"] = len(ranges)
        entities = [record, *(_shard_record(run_id, index, lo, hi) for index, (lo, hi) in enumerate(ranges))]
        chains = list(range(len(ranges)))

    def create() -> None:
        db.put(entities)
        for shard in chains:
            send_step(runtime, run_id=run_id, iter_id=cls.iter_id, queue=cls.queueName, env=env, generation=0,
                      step=0, shard=shard)

    with outbox.RequestScope(runtime):  # the steps leave when this block ends, not with the caller's request
        db.run_in_transaction(create)
    _note_total(run_id, query)
    log.info("started query run %s of %s over %r in %d chain(s)", run_id, cls.iter_id, query, len(chains))
    started.note("queryiter", run_id, cls.__name__)
    return run_id


def _check_shards(cls: type[QueryIter], query: db.Query, shards: Any) -> None:
    if type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
        raise DeferredArgumentError(f"{cls.iter_id}.startIterOnQuery: shards must be an int from 1 to {MAX_SHARDS}, "
                                    f"got {shards!r}")
    reason = split.refusal(query) if shards > 1 else None
    if reason is not None:
        raise DeferredArgumentError(f"{cls.iter_id}.startIterOnQuery: cannot split {query!r} into {shards} shards: "
                                    f"{reason}; start it with shards=1")


def _shard_record(run_id: str, index: int, lo: db.Key | None, hi: db.Key | None) -> db.Entity:
    shard = db.Entity(shard_key(run_id, index), exclude_from_indexes=SHARD_UNINDEXED)
    shard.update({"run": run_id, "index": index, "lo": lo, "hi": hi, "state": RUNNING, "step": 0, "processed": 0,
                  "errors": 0, "cursor": None, "done": "[]", "seconds_per_entry": 0.0, "updated": now(),
                  "last_error": None})
    return shard


def _note_total(run_id: str, query: db.Query) -> None:
    """Count ``query`` and keep the total on the run record (a chunk may be writing it meanwhile)."""
    total = _count(query)
    if total is None:
        return

    def write() -> None:
        record = db.get(run_key(run_id))
        if record is not None:
            record["total"] = total
            db.put(record)

    try:
        db.run_in_transaction(write)
    except Exception:  # the run has started: a missing total only costs its progress bar
        log.warning("could not keep the total of query run %s: it shows no total", run_id, exc_info=True)


def _count(query: db.Query) -> int | None:
    """The entities a run will visit, for its progress; ``None`` (no bar) if counting fails."""
    try:
        total = db_query.count(query)
    except Exception:
        log.warning("could not count %r: the run shows no total", query, exc_info=True)
        return None
    return total if query.limit_count is None else min(total, query.limit_count)

