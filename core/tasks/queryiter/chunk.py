"""One step of a query run: handle entities from the recorded position until the time budget is
spent, then queue the next step, or claim the finish and call ``handleFinish`` once.

:func:`run_step` is the executor's runner for ``queryIter`` envelopes; it is registered at the end
of this room, the one place this kind is made known.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now as now
from core.tasks import aio, message
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import PayloadError, PermanentTaskFailure, TaskNotFound, error_text
from core.tasks.queryiter import split
from core.tasks.queryiter.api import DEFAULT_CHUNK_SECONDS, QueryIter, batch_handler
from core.tasks.queryiter.finish import Lost, call_finish, check_claim, claim_over_shards
from core.tasks.queryiter.runs import (
    QUERY_ITER_PATH,
    RUNNING,
    SHARD_DONE,
    STOPPED,
    TASK_KIND,
    fail_run,
    parse_step,
    run_key,
    send_step,
    shard_key,
)
from core.tasks.registry import declare_kind
from core.tasks.runtime import TaskRuntime

log = logging.getLogger(__name__)

#: Smallest page an adapted page size goes down to.
MIN_PAGE_SIZE = 10


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
                       "processed": self.processed, "errors": self.errors, "updated": now()})


def _key_digest(entity: db.Entity) -> str:
    """A 64-bit digest of the entity's key path (the query fixes project and namespace)."""
    return hashlib.blake2b(repr(entity.key.flat_path).encode(), digest_size=8).hexdigest()


_EXHAUSTED, _YIELD, _STOPPED = "exhausted", "yield", "stopped"


class _Chunk:
    """One execution of one step of a run."""

    def __init__(self, runtime: TaskRuntime, cls: type[QueryIter], run: db.Entity, record: db.Entity,
                 env: dict[str, Any], generation: int, step: int, shard: int | None) -> None:
        """``record`` holds the position: the run record itself, or the shard record of ``shard``."""
        self.runtime, self.cls, self.env = runtime, cls, env
        self.key: db.Key = record.key
        self.run_key: db.Key = run.key
        self.run_id = str(run.key.name)
        self.queue: str = run["queue"]
        self.generation, self.step, self.shard = generation, step, shard
        self.custom = tagged_json.loads(run["custom"])
        self.query = db.Query.from_dict(tagged_json.loads(run["query"]))
        if shard is not None:
            self.query = split.in_range(self.query, record["lo"], record["hi"])
        if cls.keysOnly:
            self.query.keys_only()
        self.position = _Position.of(record)
        # A claimed finish whose execution failed or died, or a shard already done: the scan is over.
        self.scanned = record.get("finishing_since") is not None or record.get("state") == SHARD_DONE
        self.seconds_per_entry = float(record.get("seconds_per_entry") or 0.0)
        self.budget = _chunk_seconds(runtime, cls)
        self.batch = batch_handler(cls)
        #: Budgets, checkpoints and the time per entry run on the app's clock (a test advances it).
        self.clock = runtime.clock
        self.started = self.saved_at = self.clock.now()
        self.handled = 0
        self.handling_time = 0.0

    def _since(self, moment: datetime.datetime) -> float:
        """Seconds from ``moment`` to now on the app's clock."""
        return (self.clock.now() - moment).total_seconds()

    # the scan

    def run(self) -> None:
        """Handle entities until the budget is spent, the query ends or the run stops."""
        try:
            outcome = _EXHAUSTED if self.scanned else self._scan()
            if outcome == _EXHAUSTED:
                self.finish()
            elif outcome == _YIELD:
                self._advance()
        except Lost:
            log.info("query run %s step %d%s: the run moved on, this execution stops", self.run_id, self.step,
                     "" if self.shard is None else f" of shard {self.shard}")

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
            if self._since(self.saved_at) >= self.cls.checkpointSeconds:
                self._save()

    def _batch_size(self, limit: int | None) -> int:
        size = self.cls.pageSize
        cap = self.cls.maxEntriesPerChunk
        if cap is not None:
            size = min(size, cap - self.handled)
        if limit is not None:
            size = min(size, limit - self.position.processed)
        if self.seconds_per_entry > 0:
            remaining = max(0.0, self.budget - (self._since(self.started)))
            size = min(size, int(remaining / self.seconds_per_entry) + 1)
        return max(1, size)

    def _handle_batch(self, batch: list[tuple[db.Entity, str]]) -> bool:
        """Handle a batch in one call; False when it failed (then it is handled one by one)."""
        assert self.batch is not None
        entities = [entity for entity, _ in batch]
        started = self.clock.now()
        try:
            aio.call(self.batch, entities, self.custom)
        except Exception as exc:  # handled again one by one, where handleError can judge each
            log.info("%s: a batch of %d failed (%r); handling them one by one", self.cls.iter_id, len(entities), exc)
            return False
        self.handled += len(entities)
        self.handling_time += self._since(started)
        self.seconds_per_entry = self.handling_time / self.handled
        self.position.done.update(digest for _, digest in batch)
        self.position.processed += len(entities)
        return True

    def _should_yield(self) -> bool:
        """Time to hand over to the next step? Never before this chunk handled one entity."""
        if self.handled == 0:
            return False
        cap = self.cls.maxEntriesPerChunk
        return (cap is not None and self.handled >= cap) or self._since(self.started) >= self.budget

    def _page_size(self, limit: int | None) -> int:
        size = self.cls.pageSize
        cap = self.cls.maxEntriesPerChunk
        if cap is not None:
            size = min(size, cap - self.handled + len(self.position.done))
        if self.seconds_per_entry > 0:
            remaining = max(0.0, self.budget - (self._since(self.started)))
            fits = int(remaining / self.seconds_per_entry * 1.2) + 1 + len(self.position.done)
            size = min(size, max(MIN_PAGE_SIZE, fits))
        if limit is not None:
            size = min(size, limit - self.position.processed + len(self.position.done))
        return max(1, size)

    def _handle(self, entity: db.Entity) -> bool:
        """Run the hooks on one entity: True to go on, False when ``handleError`` stops the run."""
        started = self.clock.now()
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
            self.handling_time += self._since(started)
            self.seconds_per_entry = self.handling_time / self.handled

    # writes to the run record

    def _update(self, change: Callable[[db.Entity, db.Entity], None], *, allow_stopped: bool = True,
                touch_run: bool = False) -> db.Entity:
        """Apply ``change(record, run)`` in a transaction if the record still belongs to this execution.

        The run record decides status and generation; a shard's record its step and position. A
        run stopped meanwhile still gets this execution's progress, then :class:`Lost` ends it.
        ``touch_run`` writes the run record too (a shard stopping the run).

        A shard reads the run record just before its transaction, not in it: transactions of
        parallel shards that all read the one run record abort each other (on the emulator; in
        production they wait on each other's locks), which failed checkpoints five times over and
        stalled a run behind the queue's backoff. A stop or resume that lands in between is met by
        the next step, which finds the run moved on; positions are still checked in the transaction.
        """
        outside = db.get(self.run_key) if self.shard is not None and not touch_run else None

        def apply() -> tuple[db.Entity, bool]:
            if self.shard is None:
                run = record = db.get(self.key)
            elif not touch_run:
                run, record = outside, db.get(self.key)
            else:
                run, record = db.get([self.run_key, self.key])
            if (run is None or record is None or int(run["generation"]) != self.generation
                    or int(record["step"]) != self.step or record.get("state") == SHARD_DONE
                    or int(record.get("processed") or 0) > self.position.processed):
                raise Lost()
            status = run["status"]
            if status == STOPPED and allow_stopped:
                self.position.write(record)
                db.put(record)
                return record, False
            if status != RUNNING:
                raise Lost()
            change(record, run)
            db.put([record, run] if touch_run and run is not record else record)
            return record, True

        record, running = db.run_in_transaction(apply)
        if not running:
            raise Lost()
        return record

    def _save(self, error: str | None = None) -> None:
        """Checkpoint: commit the position so a retry of this step goes on from here."""
        def change(record: db.Entity, run: db.Entity) -> None:
            self.position.write(record)
            record["seconds_per_entry"] = self.seconds_per_entry
            if error is not None:
                record["last_error"] = error_text(error)

        self._update(change)
        self.saved_at = self.clock.now()

    def _stop(self, error: str) -> None:
        def change(record: db.Entity, run: db.Entity) -> None:
            self.position.write(record)
            run.update({"status": STOPPED, "last_error": error_text(error), "updated": now()})

        self._update(change, touch_run=True)
        log.warning("query run %s stopped by handleError: %s", self.run_id, error)

    def _advance(self) -> None:
        """Commit the position as the end of this step, then queue the next step."""
        def change(record: db.Entity, run: db.Entity) -> None:
            self.position.write(record)
            record.update({"step": self.step + 1, "seconds_per_entry": self.seconds_per_entry})

        self._update(change)
        # Sent after the commit: if this fails the step is retried, finds the record one step on
        # and sends the same name again.
        self.send_successor()

    def send_successor(self) -> None:
        send_step(self.runtime, run_id=self.run_id, iter_id=self.cls.iter_id, queue=self.queue, env=self.env,
                  generation=self.generation, step=self.step + 1, shard=self.shard)

    # the end

    def finish(self) -> None:
        """Claim the finish (a shard: mark itself done, then claim if all are), run ``handleFinish`` once."""
        token = uuid.uuid4().hex
        lease_time = self.cls.finishLease
        if self.shard is not None:
            if not self.scanned:
                def done(record: db.Entity, run: db.Entity) -> None:
                    self.position.write(record)
                    record["state"] = SHARD_DONE

                self._update(done)
                log.info("query run %s: shard %d is done after %d entities", self.run_id, self.shard,
                         self.position.processed)
            total = claim_over_shards(self.run_key, self.generation, lease_time, token)
            if total is None:
                return
        else:
            def claim(record: db.Entity, run: db.Entity) -> None:
                check_claim(record, lease_time, self.run_id)
                self.position.write(record)
                record.update({"finishing_since": now(), "finish_token": token})

            total = int(self._update(claim, allow_stopped=False)["processed"])
        call_finish(self.cls, self.run_key, token, total, self.custom)


def _chunk_seconds(runtime: TaskRuntime, cls: type[QueryIter]) -> float:
    if cls.chunkSeconds is not None:
        return float(cls.chunkSeconds)
    return runtime.settings.tasks_query_chunk_seconds or DEFAULT_CHUNK_SECONDS


def run_step(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo) -> None:
    """Run one ``queryIter`` envelope (the executor's runner for this kind)."""
    run_id, iter_id, generation, step, shard = parse_step(envelope.payload)
    key = run_key(run_id)
    record = db.get(key)
    if record is None:
        raise PermanentTaskFailure(f"query run {run_id} does not exist")
    # The run record decides the class: a step only says which run it belongs to.
    if record.get("class") != iter_id:
        raise PayloadError(f"a step of query run {run_id} names {iter_id!r}, its run is of {record.get('class')!r}")
    cls = runtime.registry.query_iters.find(iter_id)
    if not (isinstance(cls, type) and issubclass(cls, QueryIter)):
        error = f"no query iterator is registered as {iter_id!r}"
        fail_run(key, error)
        raise TaskNotFound(error)
    if record["status"] != RUNNING or int(record["generation"]) != generation:
        log.info("query run %s is %s (generation %s): step %d does nothing",
                 run_id, record["status"], record["generation"], step)
        return
    if shard is None and record.get("shards"):
        raise PayloadError(f"a step of sharded query run {run_id} names no shard")
    holder = record if shard is None else _shard_of(record, shard)
    chunk = _Chunk(runtime, cls, record, holder, dict(envelope.env), generation, step, shard)
    if int(holder["step"]) == step + 1:
        # This step committed before and is being retried: make sure its successor exists.
        chunk.send_successor()
        return
    if int(holder["step"]) != step:
        log.warning("query run %s is at step %s; stale step %d does nothing", run_id, holder["step"], step)
        return
    try:
        chunk.run()
    except PermanentTaskFailure as exc:
        fail_run(key, f"{type(exc).__name__}: {exc}")
        raise


def _shard_of(record: db.Entity, shard: int) -> db.Entity:
    """The record of ``shard`` of the run ``record`` (a step naming a shard the run lacks is malformed)."""
    run_id = str(record.key.name)
    if shard >= int(record.get("shards") or 0):
        raise PayloadError(f"a step names shard {shard} of query run {run_id}, which has {record.get('shards') or 0}")
    holder = db.get(shard_key(run_id, shard))
    if holder is None:
        raise PermanentTaskFailure(f"shard {shard} of query run {run_id} does not exist")
    return holder


declare_kind(TASK_KIND, run_step, QUERY_ITER_PATH)
