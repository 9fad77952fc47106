"""One step of a query run: handle entities from the recorded position until the time budget is
spent, then queue the next step, or claim the finish and call ``handleFinish`` once.

:func:`run_step` is the executor's runner for ``queryIter`` envelopes; it is registered at the end
of this room, the one place this kind is made known.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from core import db
from core import json as tagged_json
from core.tasks import aio, dispatch, executor, lease, message
from core.tasks.errors import PayloadError, PermanentTaskFailure, RetryTask, TaskNotFound
from core.tasks.queryiter.api import DEFAULT_CHUNK_SECONDS, QueryIter, batch_handler
from core.tasks.queryiter.runs import (
    FINISHED,
    RUNNING,
    STOPPED,
    TASK_KIND,
    error_text,
    fail_run,
    now,
    parse_step,
    run_key,
    step_request,
)
from core.tasks.runtime import TaskRuntime
from core.tasks.security import TaskInfo
from core.tasks.transports.base import TaskRequest

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
        self.batch = batch_handler(cls)
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
        return step_request(self.runtime, run_id=self.run_id, iter_id=self.cls.iter_id, queue=self.queue,
                             env=self.env, generation=self.generation, step=self.step + 1)

    # the end

    def finish(self) -> None:
        """Claim the finish, run ``handleFinish`` once, mark the run finished."""
        token = uuid.uuid4().hex
        lease_time = self.cls.finishLease

        def claim(record: db.Entity) -> None:
            since = record.get("finishing_since")
            if since is not None and now() - since < lease_time:
                raise RetryTask(f"query run {self.run_id} is being finished by another execution")
            self.position.write(record)
            record.update({"finishing_since": now(), "finish_token": token})

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
            ended = now()
            current.update({"status": FINISHED, "finished": ended, "updated": ended, "finishing_since": None})
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
                               "updated": now()})
                db.put(record)

        db.run_in_transaction(release)


def _chunk_seconds(runtime: TaskRuntime, cls: type[QueryIter]) -> float:
    if cls.chunkSeconds is not None:
        return float(cls.chunkSeconds)
    return runtime.settings.tasks_query_chunk_seconds or DEFAULT_CHUNK_SECONDS



def run_step(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo) -> None:
    """Run one ``queryIter`` envelope (the executor's runner for this kind)."""
    run_id, iter_id, generation, step = parse_step(envelope.payload)
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
        fail_run(key, f"{type(exc).__name__}: {exc}")
        raise


executor.register_kind(TASK_KIND, run_step)
