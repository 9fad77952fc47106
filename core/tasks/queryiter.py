"""Query iterators: run a Datastore query over a chain of tasks, one time-boxed chunk per task.

A subclass of :class:`QueryIter` says what to do with each entity (``handleEntry``), when the run
is over (``handleFinish``) and after a failed entity (``handleError``);
``Reindex.startIterOnQuery(query, customData)`` returns at once and the first chunk runs as a task
posted to ``/_tasks/queryIter``.

How a run behaves (and why it differs from ViUR's five entities per task):

- **Chunks fill a time budget.** A chunk reads large pages by cursor and handles entities until its
  budget (``chunkSeconds``, default :data:`DEFAULT_CHUNK_SECONDS`, well inside any dispatch
  deadline) is used up, then queues the next step. Pages shrink to what the budget can take once
  the handling rate is known, so slow handlers do not fetch entities they will not reach.
- **One run record is the truth.** Kind :data:`RUN_KIND` keeps the class, query, custom data,
  caller environment, status (running / finished / stopped / failed), position, processed count
  and times, and the total the query matched when the run started (a COUNT aggregation: the
  dashboard's progress bar and ETA; the query may change while the run goes on). A position is
  the cursor of the current page plus the keys already handled on it, so a chunk can stop after
  any entity, also when ``handleEntry`` deletes what it handled.
  Progress is committed transactionally at page ends every ``checkpointSeconds`` and when a chunk
  ends; a retried chunk goes on from the last commit.
- **A chain cannot fork.** Step tasks are named after a hash of (run, generation, step). A step
  that is retried after it committed sends its successor again under the same name, which the
  queue refuses; a step whose record has moved on (another execution committed it, the run was
  stopped or resumed) does nothing. Resuming starts a new generation, so its names are fresh.
- **handleFinish runs once.** The step that exhausts the query claims the finish on the record in
  a transaction, calls ``handleFinish`` and marks the run finished. A retry finds it finished or
  claimed; the claim is renewed while ``handleFinish`` runs, and one not renewed for
  ``finishLease`` (its holder died) may be taken over.
- **Errors.** ``handleEntry`` is retried in place ``entryRetries`` times, then ``handleError``
  decides: ``True`` goes on, ``False`` stops the run keeping its position (see :func:`resume_run`),
  raising ends the chunk after saving progress so the queue retries it from the failed entity.
  An unknown class id fails the run (recorded) and answers 2xx: no endless retry.
- **Context travels.** The caller's user, language and custom environment are captured once at
  the start and carried in every step's envelope, as for deferred calls.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from core import db, db_query
from core import json as tagged_json
from core.clock import utc_now as _now
from core.tasks import aio, dispatch, lease, message, started
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.context import capture_environment
from core.tasks.errors import (
    ConfigurationError,
    DeferredArgumentError,
    NotFound,
    PayloadError,
    PermanentTaskFailure,
    RetryTask,
    TaskNotFound,
    error_text,
)
from core.tasks.registry import TaskRegistry, declare, declare_kind, qualified_name
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.transports.base import TaskRequest, hashed_task_name
from core.tasks.wire import build_request

log = logging.getLogger(__name__)

QUERY_ITER_PATH = "/_tasks/queryIter"
TASK_KIND = "queryIter"
RUN_KIND = "_tasks_query_run"

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED)

#: Seconds of work per chunk unless the class or the settings say otherwise.
DEFAULT_CHUNK_SECONDS = 10.0
#: Entities asked for per page: large pages are what makes a cursor scan fast.
DEFAULT_PAGE_SIZE = 500
#: Smallest page an adapted page size goes down to.
MIN_PAGE_SIZE = 10
#: Custom data, query and caller environment must fit in the run record (entities stop at 1 MiB).
MAX_RECORD_DATA_BYTES = 900_000
_UNINDEXED = ("query", "custom", "env", "cursor", "done", "last_error")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # run ids are uuid4 hex


# --- classes ----------------------------------------------------------------------------------

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
    def startIterOnQuery(cls, query: db.Query, customData: Any = None) -> str:  # noqa: N802, N803
        """Start iterating ``query`` on this class; returns the run id at once.

        The first chunk already runs as a task. ``customData`` must survive ``core.json``; a value
        that can't, or a query a cursor can't resume (IN, NOT_IN, !=), raises here.
        """
        return start_run(cls, query, customData)

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

    keysOnly = True

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        db.delete(entry.key)

    @classmethod
    def handleEntries(cls, entries: list[db.Entity], customData: Any) -> None:  # noqa: N802, N803
        db.delete([entry.key for entry in entries])


def query_iter_class(iter_id: str, registry: TaskRegistry | None = None) -> type[QueryIter]:
    """The class registered as ``iter_id`` (raises :class:`TaskNotFound`)."""
    table = (registry or get_runtime().registry).query_iters
    found = table.get(iter_id)
    if not (isinstance(found, type) and issubclass(found, QueryIter)):
        raise TaskNotFound(f"{iter_id!r} is not a query iterator")
    return found


def _batch_handler(cls: type[QueryIter]) -> Callable[[list[db.Entity], Any], None] | None:
    """``cls.handleEntries`` if the class defining ``handleEntry`` defines it too, else ``None``."""
    def owner(name: str) -> type | None:
        return next((c for c in cls.__mro__ if name in vars(c)), None)

    batch_owner = owner("handleEntries")
    if batch_owner is None or vars(batch_owner)["handleEntries"] is None or batch_owner is not owner("handleEntry"):
        return None
    return cls.handleEntries


# --- run records ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run as the dashboard shows it."""

    id: str
    iterator: str
    kind: str | None
    queue: str
    status: str
    processed: int
    errors: int
    generation: int
    step: int
    cursor: str | None
    started: datetime.datetime
    updated: datetime.datetime
    finished: datetime.datetime | None
    last_error: str | None
    #: Entities the query matched at the start; ``None`` for runs started before totals were kept.
    total: int | None = None

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the finish (running: to now; stopped/failed: last update)."""
        if self.finished is not None:
            end = self.finished
        elif self.status == RUNNING:
            end = _now()
        else:
            end = self.updated
        return max(0.0, (end - self.started).total_seconds())

    @property
    def rate(self) -> float:
        """Entities per second over :attr:`elapsed`."""
        elapsed = self.elapsed
        return self.processed / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until a running run reaches :attr:`total` at its current rate (``None``: unknown)."""
        if self.status != RUNNING or self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.processed) / self.rate

    @classmethod
    def from_entity(cls, entity: db.Entity) -> RunInfo:
        return cls(id=str(entity.key.name), iterator=entity["class"], kind=entity.get("kind"),
                   queue=entity["queue"], status=entity["status"], processed=int(entity.get("processed") or 0),
                   errors=int(entity.get("errors") or 0), generation=int(entity["generation"]),
                   step=int(entity["step"]), cursor=entity.get("cursor"), started=entity["started"],
                   updated=entity["updated"], finished=entity.get("finished"), last_error=entity.get("last_error"),
                   total=entity.get("total"))


def _run_key(run_id: str) -> db.Key:
    return db.key(RUN_KIND, run_id)


def get_run(run_id: str) -> RunInfo | None:
    """The run ``run_id``, or ``None``."""
    entity = db.get(_run_key(run_id))
    return None if entity is None else RunInfo.from_entity(entity)


def list_runs(limit: int = 50) -> list[RunInfo]:
    """The latest runs, newest first (for the admin dashboard)."""
    return [RunInfo.from_entity(e) for e in db.Query(RUN_KIND).order("-started").run(limit=limit)]


def step_task_name(run_id: str, generation: int, step: int) -> str:
    """The queue name of one step: hashed first (Cloud Tasks wants no sequential prefixes)."""
    return hashed_task_name(f"{run_id}/{generation}/{step}", f"-qi-{generation}-{step}")


def _step_request(runtime: TaskRuntime, *, run_id: str, iter_id: str, queue: str, env: dict[str, Any],
                  generation: int, step: int) -> TaskRequest:
    envelope = message.Envelope(kind=TASK_KIND, queue=queue, env=env,
                                payload={"run": run_id, "class": iter_id, "gen": generation, "step": step})
    return build_request(runtime, envelope, QUERY_ITER_PATH, name=step_task_name(run_id, generation, step))


def _encode_argument(value: Any, what: str, cls: type[QueryIter]) -> str:
    try:
        return tagged_json.dumps(value, path=what)
    except TypeError as exc:
        raise DeferredArgumentError(f"cannot start {cls.iter_id}: {exc}") from None


def start_run(cls: type[QueryIter], query: db.Query, custom_data: Any = None, *,
              runtime: TaskRuntime | None = None) -> str:
    """Create the run record of ``cls`` over ``query`` and queue its first step; returns the run id.

    Record and first task are written in one transaction (the task through the outbox), so a run
    exists if and only if its chain was started.
    """
    runtime = runtime or get_runtime()
    if not runtime.settings.tasks_secret:
        raise ConfigurationError("TASKS_SECRET is not set: tasks could not be verified")
    if runtime.registry.query_iters.find(cls.iter_id) is not cls:
        raise ConfigurationError(f"{cls.iter_id} is not registered in this app's task registry")
    if not isinstance(query, db.Query):
        raise TypeError(f"startIterOnQuery needs a core.db.Query, got {type(query).__name__}")
    if not query.is_cursor_resumable:
        raise DeferredArgumentError(
            f"cannot start {cls.iter_id}: {query!r} uses IN, NOT_IN or != and a cursor cannot resume it; "
            "start one run per value instead")
    custom = _encode_argument(custom_data, "customData", cls)
    query_json = _encode_argument(query.to_dict(), "query", cls)
    env = capture_environment(runtime)
    env_json = _encode_argument(env, "environment", cls)
    size = len(custom) + len(query_json) + len(env_json)
    if size > MAX_RECORD_DATA_BYTES:
        raise DeferredArgumentError(f"cannot start {cls.iter_id}: customData, query and environment take {size} "
                                    f"bytes encoded, at most {MAX_RECORD_DATA_BYTES} fit in the run record")
    total = _count(query)
    run_id = uuid.uuid4().hex
    now = _now()
    record = db.Entity(_run_key(run_id), exclude_from_indexes=_UNINDEXED)
    record.update({
        "class": cls.iter_id, "kind": query.kind, "queue": cls.queueName, "query": query_json, "custom": custom,
        "env": env_json, "status": RUNNING, "generation": 0, "step": 0,
        "processed": 0, "errors": 0, "cursor": None, "done": "[]", "seconds_per_entry": 0.0, "total": total,
        "started": now, "updated": now, "finished": None, "finishing_since": None, "finish_token": None,
        "last_error": None,
    })
    request = _step_request(runtime, run_id=run_id, iter_id=cls.iter_id, queue=cls.queueName, env=env,
                            generation=0, step=0)

    def create() -> None:
        db.put(record)
        dispatch.send(runtime, request)

    db.run_in_transaction(create)
    log.info("started query run %s of %s over %r", run_id, cls.iter_id, query)
    started.note("queryiter", run_id, cls.__name__)
    return run_id


def _count(query: db.Query) -> int | None:
    """The entities a run will visit, for its progress; ``None`` (no bar) if counting fails."""
    try:
        total = db_query.count(query)
    except Exception:
        log.warning("could not count %r: the run shows no total", query, exc_info=True)
        return None
    return total if query.limit_count is None else min(total, query.limit_count)


def stop_run(run_id: str) -> bool:
    """Stop a running run where it is; ``False`` if it was not running or is already finishing.

    Resume it with :func:`resume_run`.
    """
    def stop() -> bool:
        record = db.get(_run_key(run_id))
        if record is None:
            raise NotFound(f"no query run {run_id!r}")
        if record["status"] != RUNNING or record.get("finishing_since") is not None:
            return False
        record.update({"status": STOPPED, "updated": _now(), "last_error": "stopped on request"})
        db.put(record)
        return True

    return db.run_in_transaction(stop)


def resume_run(run_id: str, *, runtime: TaskRuntime | None = None) -> bool:
    """Continue a stopped or failed run from its recorded position; ``False`` if it was neither.

    Starts a new generation of step names, so steps queued before the stop can never run again.
    """
    runtime = runtime or get_runtime()

    def resume() -> bool:
        record = db.get(_run_key(run_id))
        if record is None:
            raise NotFound(f"no query run {run_id!r}")
        if record["status"] not in (STOPPED, FAILED):
            return False
        generation = int(record["generation"]) + 1
        record.update({"status": RUNNING, "generation": generation, "updated": _now(), "finished": None,
                       "finishing_since": None, "finish_token": None})
        db.put(record)
        dispatch.send(runtime, _step_request(runtime, run_id=run_id, iter_id=record["class"], queue=record["queue"],
                                             env=tagged_json.loads(record["env"]), generation=generation,
                                             step=int(record["step"])))
        return True

    return db.run_in_transaction(resume)


# --- running one chunk ------------------------------------------------------------------------

@dataclasses.dataclass
class _Position:
    """Where a run is: the cursor of the current page and the entities handled on that page.

    Handled entities are kept as short digests of their key paths: at most a page of them, small
    enough for the run record whatever the keys look like.
    """

    cursor: str | None
    done: set[str]
    processed: int
    errors: int

    @classmethod
    def of(cls, record: db.Entity) -> _Position:
        done = set(tagged_json.loads(record.get("done") or "[]"))
        return cls(record.get("cursor"), done, int(record.get("processed") or 0), int(record.get("errors") or 0))

    def write(self, record: db.Entity) -> None:
        record.update({"cursor": self.cursor, "done": tagged_json.dumps(sorted(self.done)),
                       "processed": self.processed, "errors": self.errors, "updated": _now()})


def _key_digest(entity: db.Entity) -> str:
    """A 64-bit digest of the entity's key path (the query fixes project and namespace)."""
    return hashlib.blake2b(repr(entity.key.flat_path).encode(), digest_size=8).hexdigest()


_EXHAUSTED, _YIELD, _STOPPED = "exhausted", "yield", "stopped"


class _Lost(Exception):
    """The run record moved on without this execution (stopped, resumed or done by another)."""


class _Chunk:
    """One execution of one step of a run."""

    def __init__(self, runtime: TaskRuntime, cls: type[QueryIter], record: db.Entity, env: dict[str, Any],
                 generation: int, step: int) -> None:
        self.runtime, self.cls, self.env = runtime, cls, env
        self.key: db.Key = record.key
        self.run_id = str(record.key.name)
        self.queue: str = record["queue"]
        self.generation, self.step = generation, step
        self.custom = tagged_json.loads(record["custom"])
        self.query = db.Query.from_dict(tagged_json.loads(record["query"]))
        if cls.keysOnly:
            self.query.keys_only()
        self.position = _Position.of(record)
        self.finish_claimed = record.get("finishing_since") is not None
        self.seconds_per_entry = float(record.get("seconds_per_entry") or 0.0)
        self.budget = _chunk_seconds(runtime, cls)
        self.batch = _batch_handler(cls)
        self.started = self.saved_at = time.monotonic()
        self.handled = 0
        self.handling_time = 0.0

    # the scan

    def run(self) -> None:
        """Handle entities until the budget is spent, the query ends or the run stops."""
        try:
            # A claimed finish whose execution failed or died: the scan is over, only the finish is left.
            outcome = _EXHAUSTED if self.finish_claimed else self._scan()
            if outcome == _EXHAUSTED:
                self.finish()
            elif outcome == _YIELD:
                self._advance()
        except _Lost:
            log.info("query run %s step %d: the run moved on, this execution stops", self.run_id, self.step)

    def _scan(self) -> str:
        """Handle pages from the recorded position until the chunk must end; says why it ended."""
        pos = self.position
        limit = self.query.limit_count
        while True:
            page = self.query.fetch_page(self._page_size(limit), pos.cursor)
            digests = [_key_digest(e) for e in page.entities]
            todo = [(e, d) for e, d in zip(page.entities, digests) if d not in pos.done]
            index = one_by_one_until = 0
            while index < len(todo):
                if limit is not None and pos.processed >= limit:
                    return _EXHAUSTED
                if self._should_yield():
                    return _YIELD
                if self.batch is not None and index >= one_by_one_until:
                    batch = todo[index:index + self._batch_size(limit)]
                    if self._handle_batch(batch):
                        index += len(batch)
                        continue
                    one_by_one_until = index + len(batch)
                entity, digest = todo[index]
                if not self._handle(entity):
                    return _STOPPED
                pos.done.add(digest)
                pos.processed += 1
                index += 1
            if not page.more or (limit is not None and pos.processed >= limit):
                return _EXHAUSTED
            pos.cursor, pos.done = page.cursor, set()
            if self._should_yield():
                return _YIELD
            if time.monotonic() - self.saved_at >= self.cls.checkpointSeconds:
                self._save()

    def _batch_size(self, limit: int | None) -> int:
        size = self.cls.pageSize
        cap = self.cls.maxEntriesPerChunk
        if cap is not None:
            size = min(size, cap - self.handled)
        if limit is not None:
            size = min(size, limit - self.position.processed)
        if self.seconds_per_entry > 0:
            remaining = max(0.0, self.budget - (time.monotonic() - self.started))
            size = min(size, int(remaining / self.seconds_per_entry) + 1)
        return max(1, size)

    def _handle_batch(self, batch: list[tuple[db.Entity, str]]) -> bool:
        """Handle a batch in one call; False when it failed (then it is handled one by one)."""
        assert self.batch is not None
        entities = [entity for entity, _ in batch]
        started = time.monotonic()
        try:
            aio.call(self.batch, entities, self.custom)
        except Exception as exc:  # handled again one by one, where handleError can judge each
            log.info("%s: a batch of %d failed (%r); handling them one by one", self.cls.iter_id, len(entities), exc)
            return False
        self.handled += len(entities)
        self.handling_time += time.monotonic() - started
        self.seconds_per_entry = self.handling_time / self.handled
        self.position.done.update(digest for _, digest in batch)
        self.position.processed += len(entities)
        return True

    def _should_yield(self) -> bool:
        """Time to hand over to the next step? Never before this chunk handled one entity."""
        if self.handled == 0:
            return False
        cap = self.cls.maxEntriesPerChunk
        return (cap is not None and self.handled >= cap) or time.monotonic() - self.started >= self.budget

    def _page_size(self, limit: int | None) -> int:
        size = self.cls.pageSize
        cap = self.cls.maxEntriesPerChunk
        if cap is not None:
            size = min(size, cap - self.handled + len(self.position.done))
        if self.seconds_per_entry > 0:
            remaining = max(0.0, self.budget - (time.monotonic() - self.started))
            fits = int(remaining / self.seconds_per_entry * 1.2) + 1 + len(self.position.done)
            size = min(size, max(MIN_PAGE_SIZE, fits))
        if limit is not None:
            size = min(size, limit - self.position.processed + len(self.position.done))
        return max(1, size)

    def _handle(self, entity: db.Entity) -> bool:
        """Run the hooks on one entity: True to go on, False when ``handleError`` stops the run."""
        started = time.monotonic()
        error: Exception | None = None
        try:
            for attempt in range(self.cls.entryRetries + 1):
                try:
                    aio.call(self.cls.handleEntry, entity, self.custom)
                    return True
                except Exception as exc:  # any failure of user code goes to handleError
                    error = exc
                    if attempt < self.cls.entryRetries:
                        log.info("%s: retrying %r after %r", self.cls.iter_id, entity.key, exc)
            assert error is not None
            try:
                go_on = aio.call(self.cls.handleError, entity, self.custom, error)
            except BaseException as raised:
                self._save(error=f"{type(raised).__name__}: {raised} (at {entity.key!r})")
                raise
            if go_on:
                self.position.errors += 1
                return True
            self._stop(f"{type(error).__name__}: {error} (at {entity.key!r})")
            return False
        finally:
            self.handled += 1
            self.handling_time += time.monotonic() - started
            self.seconds_per_entry = self.handling_time / self.handled

    # writes to the run record

    def _update(self, change: Callable[[db.Entity], None], *, allow_stopped: bool = True) -> db.Entity:
        """Apply ``change`` to the record in a transaction if it still belongs to this execution.

        A run stopped meanwhile still gets this execution's progress, then :class:`_Lost` ends it.
        """
        def apply() -> tuple[db.Entity, bool]:
            record = db.get(self.key)
            if (record is None or int(record["generation"]) != self.generation or int(record["step"]) != self.step
                    or int(record.get("processed") or 0) > self.position.processed):
                raise _Lost()
            status = record["status"]
            if status == STOPPED and allow_stopped:
                self.position.write(record)
                db.put(record)
                return record, False
            if status != RUNNING:
                raise _Lost()
            change(record)
            db.put(record)
            return record, True

        record, running = db.run_in_transaction(apply)
        if not running:
            raise _Lost()
        return record

    def _save(self, error: str | None = None) -> None:
        """Checkpoint: commit the position so a retry of this step goes on from here."""
        def change(record: db.Entity) -> None:
            self.position.write(record)
            record["seconds_per_entry"] = self.seconds_per_entry
            if error is not None:
                record["last_error"] = error_text(error)

        self._update(change)
        self.saved_at = time.monotonic()

    def _stop(self, error: str) -> None:
        def change(record: db.Entity) -> None:
            self.position.write(record)
            record.update({"status": STOPPED, "last_error": error_text(error)})

        self._update(change)
        log.warning("query run %s stopped by handleError: %s", self.run_id, error)

    def _advance(self) -> None:
        """Commit the position as the end of this step, then queue the next step."""
        def change(record: db.Entity) -> None:
            self.position.write(record)
            record.update({"step": self.step + 1, "seconds_per_entry": self.seconds_per_entry})

        self._update(change)
        # Sent after the commit: if this fails the step is retried, finds the record one step on
        # and sends the same name again.
        dispatch.send(self.runtime, self.successor())

    def successor(self) -> TaskRequest:
        return _step_request(self.runtime, run_id=self.run_id, iter_id=self.cls.iter_id, queue=self.queue,
                             env=self.env, generation=self.generation, step=self.step + 1)

    # the end

    def finish(self) -> None:
        """Claim the finish, run ``handleFinish`` once, mark the run finished."""
        token = uuid.uuid4().hex
        lease_time = self.cls.finishLease

        def claim(record: db.Entity) -> None:
            since = record.get("finishing_since")
            if since is not None and _now() - since < lease_time:
                raise RetryTask(f"query run {self.run_id} is being finished by another execution")
            self.position.write(record)
            record.update({"finishing_since": _now(), "finish_token": token})

        record = self._update(claim, allow_stopped=False)
        total = int(record["processed"])
        try:
            with lease.Heartbeat(self._finish_keeper(token), lease.renew_interval(lease_time),
                                 what=f"handleFinish of query run {self.run_id}"):
                aio.call(self.cls.handleFinish, total, self.custom)
        except BaseException as exc:
            self._release_claim(token, f"handleFinish: {type(exc).__name__}: {exc}")
            raise

        def done() -> None:
            current = db.get(self.key)
            if current is None or current.get("finish_token") != token:
                return
            now = _now()
            current.update({"status": FINISHED, "finished": now, "updated": now, "finishing_since": None})
            db.put(current)

        db.run_in_transaction(done)
        log.info("query run %s of %s finished after %d entities", self.run_id, self.cls.iter_id, total)

    def _finish_keeper(self, token: str) -> Callable[[], bool]:
        """Renews the finish claim while ``handleFinish`` runs, so no retry takes it over."""
        return lease.stamper(self.key, "finishing_since", lambda record: record.get("finish_token") == token)

    def _release_claim(self, token: str, error: str) -> None:
        def release() -> None:
            record = db.get(self.key)
            if record is not None and record.get("finish_token") == token:
                record.update({"finishing_since": None, "finish_token": None, "last_error": error_text(error),
                               "updated": _now()})
                db.put(record)

        db.run_in_transaction(release)


def _chunk_seconds(runtime: TaskRuntime, cls: type[QueryIter]) -> float:
    if cls.chunkSeconds is not None:
        return float(cls.chunkSeconds)
    return runtime.settings.tasks_query_chunk_seconds or DEFAULT_CHUNK_SECONDS


def _fail_run(key: db.Key, error: str) -> None:
    def fail() -> None:
        record = db.get(key)
        if record is not None and record["status"] == RUNNING:
            record.update({"status": FAILED, "last_error": error_text(error), "updated": _now()})
            db.put(record)

    db.run_in_transaction(fail)


def _parse_step(payload: Any) -> tuple[str, str, int, int]:
    try:
        run_id, iter_id = payload["run"], payload["class"]
        generation, step = payload["gen"], payload["step"]
    except (KeyError, TypeError):
        raise PayloadError("malformed query iterator step") from None
    if not (isinstance(run_id, str) and _RUN_ID_RE.fullmatch(run_id) and isinstance(iter_id, str)
            and type(generation) is int and type(step) is int):
        raise PayloadError("malformed query iterator step")
    return run_id, iter_id, generation, step


def run_step(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo) -> None:
    """Run one ``queryIter`` envelope (the executor's runner for this kind)."""
    run_id, iter_id, generation, step = _parse_step(envelope.payload)
    key = _run_key(run_id)
    record = db.get(key)
    if record is None:
        raise PermanentTaskFailure(f"query run {run_id} does not exist")
    # The run record decides the class: a step only says which run it belongs to.
    if record.get("class") != iter_id:
        raise PayloadError(f"a step of query run {run_id} names {iter_id!r}, its run is of {record.get('class')!r}")
    cls = runtime.registry.query_iters.find(iter_id)
    if not (isinstance(cls, type) and issubclass(cls, QueryIter)):
        error = f"no query iterator is registered as {iter_id!r}"
        _fail_run(key, error)
        raise TaskNotFound(error)
    if record["status"] != RUNNING or int(record["generation"]) != generation:
        log.info("query run %s is %s (generation %s): step %d does nothing",
                 run_id, record["status"], record["generation"], step)
        return
    chunk = _Chunk(runtime, cls, record, dict(envelope.env), generation, step)
    if int(record["step"]) == step + 1:
        # This step committed before and is being retried: make sure its successor exists.
        dispatch.send(runtime, chunk.successor())
        return
    if int(record["step"]) != step:
        log.warning("query run %s is at step %s; stale step %d does nothing", run_id, record["step"], step)
        return
    try:
        chunk.run()
    except PermanentTaskFailure as exc:
        _fail_run(key, f"{type(exc).__name__}: {exc}")
        raise


declare_kind(TASK_KIND, run_step, QUERY_ITER_PATH)
