"""Run records of query iterators: what a run is, reading them, stopping and resuming, step names.

A run record (kind :data:`RUN_KIND`) is the truth about one run; a step task only says which run,
generation and step it is. A sharded run also has one shard record (kind :data:`SHARD_KIND`) per
key range, holding that range's position and count; status and generation stay on the run record.
Their states are task states (:class:`~core.tasks.records.TaskState`), stored by their words.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now as now
from core.tasks import message
from core.tasks.errors import NotFound, PayloadError, error_text
from core.tasks.records import TaskState
from core.tasks.runtime import TaskRuntime, get_runtime
from core.tasks.send import send
from core.tasks.transports.base import hashed_task_name

log = logging.getLogger(__name__)

QUERY_ITER_PATH = "/_tasks/queryIter"
TASK_KIND = "queryIter"
RUN_KIND = "_tasks_query_run"
SHARD_KIND = "_tasks_query_shard"

RUNNING, FINISHED, STOPPED, FAILED = TaskState.RUNNING, TaskState.FINISHED, TaskState.STOPPED, TaskState.FAILED
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED)
#: A shard whose range is exhausted (its count is final); a shard still scanning is ``running``.
SHARD_DONE = TaskState.DONE
#: Most shards one run may have: a run's start writes all shard records and first steps at once.
MAX_SHARDS = 100

#: Custom data, query and caller environment must fit in the run record (entities stop at 1 MiB).
MAX_RECORD_DATA_BYTES = 900_000
UNINDEXED = ("query", "custom", "env", "cursor", "done", "last_error")
SHARD_UNINDEXED = ("cursor", "done", "last_error", "lo", "hi")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # run ids are uuid4 hex


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One key range of a sharded run: its progress."""

    index: int
    status: TaskState
    processed: int
    errors: int
    step: int
    updated: datetime.datetime
    last_error: str | None

    @classmethod
    def from_entity(cls, entity: db.Entity) -> ShardInfo:
        return cls(index=int(entity["index"]), status=_state(entity["state"], (RUNNING, SHARD_DONE)),
                   processed=int(entity.get("processed") or 0),
                   errors=int(entity.get("errors") or 0), step=int(entity["step"]), updated=entity["updated"],
                   last_error=entity.get("last_error"))


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run as the dashboard shows it."""

    id: str
    iterator: str
    kind: str | None
    queue: str
    status: TaskState
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
    #: The shards of a sharded run, by index (empty for a single chain).
    shards: tuple[ShardInfo, ...] = ()

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the finish (running: to now; stopped/failed: last update)."""
        if self.finished is not None:
            end = self.finished
        elif self.status == RUNNING:
            end = now()
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
    def from_entity(cls, entity: db.Entity, shards: tuple[ShardInfo, ...] = ()) -> RunInfo:
        """The run of a record; a sharded run's counts are its shards' (until the finish writes the total)."""
        info = cls(id=str(entity.key.name), iterator=entity["class"], kind=entity.get("kind"),
                   queue=entity["queue"], status=_state(entity["status"], STATUSES),
                   processed=int(entity.get("processed") or 0), errors=int(entity.get("errors") or 0),
                   generation=int(entity["generation"]),
                   step=int(entity["step"]), cursor=entity.get("cursor"), started=entity["started"],
                   updated=entity["updated"], finished=entity.get("finished"), last_error=entity.get("last_error"),
                   total=entity.get("total"), shards=shards)
        if not shards or entity.get("finishing_since") is not None or info.status == FINISHED:
            return info
        updated = max([info.updated, *(shard.updated for shard in shards)])
        last_error = info.last_error or next((s.last_error for s in shards if s.last_error), None)
        return dataclasses.replace(info, processed=sum(s.processed for s in shards),
                                   errors=sum(s.errors for s in shards), updated=updated, last_error=last_error)


def _state(stored: Any, allowed: tuple[TaskState, ...]) -> TaskState:
    """A stored state word as its :class:`TaskState`; ``ValueError`` for one a run can't be in."""
    state = TaskState(stored)
    if state not in allowed:
        raise ValueError(f"{state!r} is not a state of a query run or shard")
    return state


def run_key(run_id: str) -> db.Key:
    return db.key(RUN_KIND, run_id)


def shard_key(run_id: str, index: int) -> db.Key:
    return db.key(SHARD_KIND, f"{run_id}-{index}")


def shard_keys(record: db.Entity) -> list[db.Key]:
    """The shard records of a run record, by index (none for a single chain)."""
    return [shard_key(str(record.key.name), index) for index in range(int(record.get("shards") or 0))]


def _shards_of(record: db.Entity, found: dict[db.Key, db.Entity]) -> tuple[ShardInfo, ...]:
    return tuple(ShardInfo.from_entity(found[key]) for key in shard_keys(record) if key in found)


def run_info(record: db.Entity) -> RunInfo:
    """The run of a record, with its shards read (one batch read for a sharded run)."""
    keys = shard_keys(record)
    found = {e.key: e for e in db.get(keys) if e is not None} if keys else {}
    return RunInfo.from_entity(record, _shards_of(record, found))


def get_run(run_id: str) -> RunInfo | None:
    """The run ``run_id``, or ``None``."""
    entity = db.get(run_key(run_id))
    return None if entity is None else run_info(entity)


def list_runs(limit: int = 50) -> list[RunInfo]:
    """The latest runs, newest first (for the admin dashboard); all their shards in one read."""
    records = db.Query(RUN_KIND).order("-started").run(limit=limit)
    keys = [key for record in records for key in shard_keys(record)]
    found = {e.key: e for e in db.get(keys) if e is not None} if keys else {}
    return [RunInfo.from_entity(record, _shards_of(record, found)) for record in records]


def step_task_name(run_id: str, generation: int, step: int, shard: int | None = None) -> str:
    """The queue name of one step (of one shard): hashed first (Cloud Tasks wants no sequential prefixes)."""
    if shard is None:
        return hashed_task_name(f"{run_id}/{generation}/{step}", f"-qi-{generation}-{step}")
    return hashed_task_name(f"{run_id}/shard-{shard}/{generation}/{step}", f"-qi{shard}-{generation}-{step}")


def send_step(runtime: TaskRuntime, *, run_id: str, iter_id: str, queue: str, env: dict[str, Any],
              generation: int, step: int, shard: int | None = None) -> None:
    """Send the task of one step of a run (of one of its shards), named so it is sent once."""
    payload: dict[str, Any] = {"run": run_id, "class": iter_id, "gen": generation, "step": step}
    if shard is not None:
        payload["shard"] = shard
    envelope = message.Envelope(kind=TASK_KIND, queue=queue, env=env, payload=payload)
    send(runtime, envelope, path=QUERY_ITER_PATH, target=iter_id,
         name=step_task_name(run_id, generation, step, shard))


def parse_step(payload: Any) -> tuple[str, str, int, int, int | None]:
    """``(run id, class id, generation, step, shard)`` of a step's payload (raises :class:`PayloadError`)."""
    try:
        run_id, iter_id = payload["run"], payload["class"]
        generation, step = payload["gen"], payload["step"]
        shard = payload.get("shard")
    except (KeyError, TypeError, AttributeError):
        raise PayloadError("malformed query iterator step") from None
    if not (isinstance(run_id, str) and _RUN_ID_RE.fullmatch(run_id) and isinstance(iter_id, str)
            and type(generation) is int and type(step) is int
            and 0 <= generation < db.INT64_MAX and 0 <= step < db.INT64_MAX
            and (shard is None or (type(shard) is int and 0 <= shard < MAX_SHARDS))):
        raise PayloadError("malformed query iterator step")
    return run_id, iter_id, generation, step, shard


def fail_run(key: db.Key, error: str) -> None:
    """Mark a running run failed (resumable), keeping its position."""
    def fail() -> None:
        record = db.get(key)
        if record is not None and record["status"] == RUNNING:
            record.update({"status": FAILED, "last_error": error_text(error), "updated": now()})
            db.put(record)

    db.run_in_transaction(fail)


def stop_run(run_id: str) -> bool:
    """Stop a running run where it is; ``False`` if it was not running or is already finishing.

    Resume it with :func:`resume_run`.
    """
    def stop() -> bool:
        record = db.get(run_key(run_id))
        if record is None:
            raise NotFound(f"no query run {run_id!r}")
        if record["status"] != RUNNING or record.get("finishing_since") is not None:
            return False
        record.update({"status": STOPPED, "updated": now(), "last_error": "stopped on request"})
        db.put(record)
        return True

    return db.run_in_transaction(stop)


def resume_run(run_id: str, *, runtime: TaskRuntime | None = None) -> bool:
    """Continue a stopped or failed run from its recorded position; ``False`` if it was neither.

    Starts a new generation of step names, so steps queued before the stop can never run again.
    """
    runtime = runtime or get_runtime()

    def resume() -> bool:
        record = db.get(run_key(run_id))
        if record is None:
            raise NotFound(f"no query run {run_id!r}")
        if record["status"] not in (STOPPED, FAILED):
            return False
        generation = int(record["generation"]) + 1
        record.update({"status": RUNNING, "generation": generation, "updated": now(), "finished": None,
                       "finishing_since": None, "finish_token": None})
        db.put(record)
        env = tagged_json.loads(record["env"])
        for shard, step in _steps_to_resume(record):
            send_step(runtime, run_id=run_id, iter_id=record["class"], queue=record["queue"], env=env,
                      generation=generation, step=step, shard=shard)
        return True

    return db.run_in_transaction(resume)


def _steps_to_resume(record: db.Entity) -> list[tuple[int | None, int]]:
    """``(shard, step)`` to send on a resume: the run's step, or each unfinished shard's.

    When every shard is done only the finish is left: one step of shard 0 goes straight to it.
    """
    keys = shard_keys(record)
    if not keys:
        return [(None, int(record["step"]))]
    shards = [s for s in db.get(keys) if s is not None]
    todo: list[tuple[int | None, int]] = [(int(s["index"]), int(s["step"])) for s in shards
                                           if s["state"] != SHARD_DONE]
    return todo or [(0, int(shards[0]["step"]))]

