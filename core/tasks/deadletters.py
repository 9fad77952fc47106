"""Dead letters: the tasks given up, kept with their request, error and attempts.

One room for the whole life of a dead letter: the pipeline :func:`record`\\ s one when a task can
never succeed (or its last allowed attempt failed); people :func:`count`, :func:`latest` and
:func:`describe` them on the dashboard, :func:`retry` one (send its request again) or
:func:`discard` it. A retried dead letter starts a fresh retry budget, tracked or not: its
self-scheduled attempt count is dropped, its age counts from the resend, and a tracked task's
record counts its attempts from zero again (see :func:`~core.tasks.queues.last_allowed_attempt`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now
from core.db import query as db_query
from core.reprs import safe_repr
from core.tasks import message, records, send
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import BadTaskRequest, EnqueueError, PayloadError, PermanentTaskFailure
from core.tasks.pipeline import target_of
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import QUEUE_NAME_RE, TaskRequest

__all__ = ["DEAD_LETTER_KIND", "record", "record_unsent", "retry", "discard", "count", "latest", "describe", "key_of",
           "payload_summary", "LetterFilter", "matching", "retry_many", "discard_many", "bulk"]

DEAD_LETTER_KIND = "_tasks_dead_letter"
#: Bytes of a task body a dead letter keeps (an entity holds at most 1 MiB); the rest is cut off.
DEAD_LETTER_PAYLOAD_BYTES = 900_000
#: Characters of error text and traceback a dead letter keeps.
DEAD_LETTER_TEXT_CHARS = 20_000
_SUMMARY_LENGTH = 160


def record(*, path: str, body: bytes, error: BaseException, info: TaskInfo,
           envelope: message.Envelope | None) -> db.Key:
    """Store a dead letter; what does not fit in one entity is kept truncated, with its size and SHA-256."""
    entity = db.Entity(db.key(DEAD_LETTER_KIND), exclude_from_indexes=("payload", "traceback", "error",
                                                                        "payload_sha256"))
    stored = body[:DEAD_LETTER_PAYLOAD_BYTES]
    entity.update({
        "task_id": _clip(envelope.id, 300) if envelope else None,
        "kind": _clip(envelope.kind, 300) if envelope else None,
        "target": _clip(target_of(envelope), 300) if envelope else None,
        "queue": _clip(info.queue or (envelope.queue if envelope else None), 300),
        "path": _clip(path, 300),
        "error": _clip(f"{type(error).__name__}: {error}", DEAD_LETTER_TEXT_CHARS),
        "error_type": _clip(type(_behind(error)).__name__, 300),
        "traceback": "".join(traceback.format_exception(error))[-DEAD_LETTER_TEXT_CHARS:],
        "attempts": info.execution_count + 1,
        "created": utc_now(),
        "payload": stored,
        "payload_size": len(body),
        "payload_sha256": hashlib.sha256(body).hexdigest(),
        "payload_truncated": len(stored) < len(body),
    })
    db.put(entity)
    return entity.key  # type: ignore[no-any-return]


def record_unsent(request: TaskRequest, error: str, attempts: int) -> db.Key:
    """Store a dead letter for a request the outbox could never hand to its queue (its sweep gave up).

    Retrying it sends its body again like any dead letter's.
    """
    try:
        envelope: message.Envelope | None = message.decode(request.body)
    except PayloadError:
        envelope = None
    failure = EnqueueError(f"never queued on {request.queue!r} after {attempts} attempt(s): {error}")
    return record(path=request.path, body=request.body, error=failure,
                  info=TaskInfo(queue=request.queue, execution_count=max(attempts - 1, 0)), envelope=envelope)


def _behind(error: BaseException) -> BaseException:
    """The error a give-up stands for (``GaveUp`` after the last allowed attempt keeps it as its cause)."""
    cause = error.__cause__
    return cause if isinstance(error, PermanentTaskFailure) and isinstance(cause, Exception) else error


def key_of(letter_id: str | None) -> db.Key:
    """The key of a dead letter from its id in a URL (ids are allocated numbers)."""
    text = letter_id or ""
    if not re.fullmatch(r"[1-9][0-9]{0,18}", text) or int(text) >= 1 << 63:
        raise BadTaskRequest(f"malformed failed-task id {text[:40]!r}")
    return db.key(DEAD_LETTER_KIND, int(text))


def count() -> int:
    """How many dead letters there are (a COUNT aggregation where the server has one)."""
    return db_query.count(db.Query(DEAD_LETTER_KIND))


def latest(limit: int) -> list[dict[str, Any]]:
    """The newest dead letters, described for the failed-tasks page."""
    entities = db.Query(DEAD_LETTER_KIND).order("-created").run(limit=limit)
    return [describe(e) for e in entities]


def describe(entity: db.Entity) -> dict[str, Any]:
    """A dead letter as the dashboard shows it (any stored value renders)."""
    payload = entity.get("payload")
    return {"id": str(entity.key.id_or_name), "task_id": entity.get("task_id"), "kind": entity.get("kind"),
            "target": entity.get("target"), "queue": entity.get("queue"), "path": entity.get("path"),
            "error": entity.get("error"), "traceback": entity.get("traceback"),
            "attempts": entity.get("attempts"), "created": entity.get("created"),
            "payload": payload_summary(bytes(payload) if payload is not None else b"")}


def payload_summary(body: bytes) -> str:
    """What a task body asked for, shortened: ``target(args, kwargs)`` or the raw start of it.

    Any stored value renders (a dead letter is often what could not be handled elsewhere).
    """
    try:
        data = tagged_json.loads(body)
    except Exception:
        return _shorten(body.decode("utf-8", "replace") or "(empty)")
    if not isinstance(data, dict):
        return _shorten(safe_repr(data))
    if "ref" in data:
        return f"{safe_repr(data.get('kind'))} task with a payload stored in Datastore ({len(body)} bytes referenced)"
    payload = data.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("target"), str):
        args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
        shown = [safe_repr(a) for a in args] if isinstance(args, list) else [f"*{safe_repr(args)}"]
        shown += ([f"{k}={safe_repr(v)}" for k, v in kwargs.items()] if isinstance(kwargs, dict)
                  else [f"**{safe_repr(kwargs)}"])
        return _shorten(f"{payload['target']}({', '.join(shown)})")
    return _shorten(safe_repr(payload))


def retry(runtime: TaskRuntime, key: db.Key) -> bool:
    """Send a dead letter's request again with a fresh retry budget, and delete it, in one transaction.

    ``False`` when it is gone already (retried or discarded by someone else): never sent twice.
    """
    def resend() -> bool:
        letter = db.get(key)
        if letter is None:
            return False
        _resend(runtime, letter)
        return True

    return db.run_in_transaction(resend)


def _resend(runtime: TaskRuntime, letter: db.Entity) -> None:
    """Send ``letter``'s request again and delete it (inside the caller's transaction)."""
    key = letter.key
    path, body = str(letter.get("path") or ""), bytes(letter.get("payload") or b"")
    if not path.startswith("/"):
        raise BadTaskRequest(f"failed task {key.id_or_name} has no path to send it to")
    if letter.get("payload_truncated"):
        raise BadTaskRequest(f"failed task {key.id_or_name} was too large to keep whole; it cannot be sent again")
    queue = str(letter.get("queue") or "").rstrip("/").rsplit("/", 1)[-1]
    if not QUEUE_NAME_RE.match(queue):
        queue = runtime.settings.tasks_default_queue
    send.resend(runtime, _with_fresh_budget(runtime, body), queue=queue, path=path, target=letter.get("target"))
    db.delete(key)
    if letter.get("task_id"):
        records.reopen(str(letter["task_id"]))  # a tracked task's record would refuse the push


def _with_fresh_budget(runtime: TaskRuntime, body: bytes) -> bytes:
    """``body`` as the first attempt of a new send: no attempts of its own, its age from now.

    A body that does not decode is sent as it was (it ends as a dead letter again, saying why).
    """
    try:
        envelope = message.decode(body)
    except PayloadError:
        return body
    stored, chunks = envelope.stored_payload, envelope.stored_chunks
    envelope.payload.pop("attempt", None)
    resent = envelope.payload.get("resent")
    # Its self-scheduled attempts get names of their own: the earlier send's stay taken a while.
    envelope.payload["resent"] = resent + 1 if type(resent) is int and resent > 0 else 1
    envelope.created = utc_now().timestamp()
    envelope.stored_payload, envelope.stored_chunks = None, 0
    fresh = message.encode(envelope, limit=runtime.settings.tasks_payload_limit)  # stores under the same id
    if stored is not None and chunks > envelope.stored_chunks:
        db.delete([db.key(message.PAYLOAD_KIND, f"{stored}-{i}") for i in range(envelope.stored_chunks, chunks)])
    return fresh


@dataclasses.dataclass(frozen=True)
class LetterFilter:
    """Which dead letters a bulk action takes: every field given must match (none given: all)."""

    target: str | None = None
    queue: str | None = None
    #: The error's class name (``OSError``, ``PermanentTaskFailure``); for a task given up after its
    #: last allowed attempt, the class of the error that attempt raised.
    error_type: str | None = None
    #: Only letters at least this old.
    older_than: datetime.timedelta | None = None

    def matches(self, letter: db.Entity, now: datetime.datetime) -> bool:
        if self.target is not None and letter.get("target") != self.target:
            return False
        if self.queue is not None and str(letter.get("queue") or "").rsplit("/", 1)[-1] != self.queue:
            return False
        if self.error_type is not None and error_type_of(letter) != self.error_type:
            return False
        created = letter.get("created")
        return self.older_than is None or (isinstance(created, datetime.datetime)
                                           and created <= now - self.older_than)

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in dataclasses.asdict(self).items() if value is not None]
        return ", ".join(parts) or "all dead letters"


def error_type_of(letter: db.Entity) -> str | None:
    """The class name of a letter's error (read from its text for letters written before it was kept)."""
    kept = letter.get("error_type")
    if isinstance(kept, str):
        return kept
    text = letter.get("error")
    return text.split(":", 1)[0] if isinstance(text, str) and ":" in text else None


def matching(selection: LetterFilter, *, now: datetime.datetime | None = None,
             page_size: int = 300) -> Iterator[db.Entity]:
    """Every dead letter ``selection`` takes, oldest first, a Datastore page at a time.

    One single-property order and the filter applied here: any combination of fields works without
    a composite index.
    """
    now = now or utc_now()
    for letter in db.Query(DEAD_LETTER_KIND).order("created").iter(page_size=page_size):
        if selection.matches(letter, now):
            yield letter


def retry_many(runtime: TaskRuntime, keys: Sequence[db.Key]) -> int:
    """Send the letters of ``keys`` again and delete them, all in one transaction; how many were there.

    A crash before the commit sends none of them and keeps them all; after it, they are sent (the
    outbox) and gone: run again, a bulk retry takes up exactly the letters that are left.
    """
    def resend() -> int:
        letters = [letter for letter in db.get(list(keys)) if letter is not None]
        for letter in letters:
            _resend(runtime, letter)
        return len(letters)

    return db.run_in_transaction(resend)


def discard_many(keys: Sequence[db.Key]) -> int:
    """Delete the letters of ``keys`` (and their stored payloads) in one transaction; how many were there."""
    def drop() -> int:
        letters = [letter for letter in db.get(list(keys)) if letter is not None]
        db.delete([letter.key for letter in letters])
        for letter in letters:
            _discard_stored_payload(bytes(letter.get("payload") or b""))
        return len(letters)

    return db.run_in_transaction(drop)


@dataclasses.dataclass
class BulkResult:
    """What a bulk action did: letters acted on, and the batches refused with why."""

    done: int = 0
    refused: list[str] = dataclasses.field(default_factory=list)


#: Letters one bulk transaction takes: each touches up to three entity groups (the letter, the task's
#: record, its stored payload) and a transaction may span 25 (the emulator enforces Datastore's limit).
BULK_BATCH = 8


def bulk(runtime: TaskRuntime, action: str, selection: LetterFilter, *, batch_size: int = BULK_BATCH,
         limit: int | None = None, progress: Callable[[int], None] | None = None) -> BulkResult:
    """``retry`` or ``discard`` every letter ``selection`` takes, ``batch_size`` letters per transaction.

    Each batch commits on its own: stopped part-way (a crash, a deploy), what was done stays done
    and the rest stays as dead letters, so running it again finishes the job with no letter sent
    twice. A batch that is refused (a letter too large to resend) is retried letter by letter, so
    one bad letter does not hold back the others. ``progress`` hears how many letters each batch took.
    """
    if action not in ("retry", "discard"):
        raise ValueError(f"unknown bulk action {action!r}: retry or discard")
    if not 1 <= batch_size <= BULK_BATCH:
        raise ValueError(f"batch_size must be from 1 to {BULK_BATCH}")
    result = BulkResult()
    keys = [letter.key for letter in matching(selection)]
    if limit is not None:
        keys = keys[:limit]
    for start in range(0, len(keys), batch_size):
        batch = keys[start:start + batch_size]
        try:
            done = retry_many(runtime, batch) if action == "retry" else discard_many(batch)
        except BadTaskRequest:
            done = 0
            for key in batch:
                try:
                    done += retry(runtime, key) if action == "retry" else discard(key)
                except BadTaskRequest as exc:
                    result.refused.append(str(exc))
        result.done += done
        if progress is not None:
            progress(len(batch))
    return result


def discard(key: db.Key) -> bool:
    """Delete a dead letter (and the payload it stored); ``False`` when it is gone already."""
    def drop() -> bool:
        letter = db.get(key)
        if letter is None:
            return False
        db.delete(key)
        _discard_stored_payload(bytes(letter.get("payload") or b""))
        return True

    return db.run_in_transaction(drop)


def _discard_stored_payload(body: bytes) -> None:
    """Delete the Datastore payload a task body refers to."""
    try:
        data = tagged_json.loads(body)
        reference = data.get("ref") if isinstance(data, dict) else None
        if not isinstance(reference, dict):
            return
        payload_id, chunks = str(reference["id"]), int(reference["chunks"])
    except Exception:
        return
    if 0 < chunks <= 64:
        db.delete([db.key(message.PAYLOAD_KIND, f"{payload_id}-{i}") for i in range(chunks)])


def _shorten(text: str) -> str:
    return text if len(text) <= _SUMMARY_LENGTH else text[:_SUMMARY_LENGTH - 1] + "…"


def _clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (indexed strings may not exceed 1,500 bytes)."""
    return text if text is None or len(text) <= limit else text[:limit - 1] + "…"
