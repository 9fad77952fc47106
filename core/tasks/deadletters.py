"""Dead letters: the tasks given up, kept with their request, error and attempts.

One room for the whole life of a dead letter: the pipeline :func:`record`\\ s one when a task can
never succeed (or its last allowed attempt failed); people :func:`count`, :func:`latest` and
:func:`describe` them on the dashboard, :func:`retry` one (send its request again) or
:func:`discard` it. A retried dead letter starts a fresh retry budget, tracked or not: its
self-scheduled attempt count is dropped, its age counts from the resend, and a tracked task's
record counts its attempts from zero again (see :func:`~core.tasks.queues.last_allowed_attempt`).
"""
from __future__ import annotations

import hashlib
import re
import traceback
from typing import Any

from core import db, db_query
from core import json as tagged_json
from core.clock import utc_now
from core.reprs import safe_repr
from core.tasks import dispatch, message, records, wire
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import BadTaskRequest, PayloadError
from core.tasks.pipeline import target_of
from core.tasks.runtime import TaskRuntime
from core.tasks.transports.base import QUEUE_NAME_RE

__all__ = ["DEAD_LETTER_KIND", "record", "retry", "discard", "count", "latest", "describe", "key_of",
           "payload_summary"]

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


def key_of(letter_id: str | None) -> db.Key:
    """The key of a dead letter from its id in a URL (ids are allocated numbers)."""
    if not re.fullmatch(r"[0-9]{1,19}", letter_id or ""):
        raise BadTaskRequest(f"malformed failed-task id {letter_id!r}")
    return db.key(DEAD_LETTER_KIND, int(letter_id))


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
        path, body = str(letter.get("path") or ""), bytes(letter.get("payload") or b"")
        if not path.startswith("/"):
            raise BadTaskRequest(f"failed task {key.id_or_name} has no path to send it to")
        if letter.get("payload_truncated"):
            raise BadTaskRequest(f"failed task {key.id_or_name} was too large to keep whole; it cannot be sent again")
        queue = str(letter.get("queue") or "").rstrip("/").rsplit("/", 1)[-1]
        if not QUEUE_NAME_RE.match(queue):
            queue = runtime.settings.tasks_default_queue
        dispatch.send(runtime, wire.signed_request(runtime, queue, path, _with_fresh_budget(runtime, body)))
        db.delete(key)
        if letter.get("task_id"):
            records.reopen(str(letter["task_id"]))  # a tracked task's record would refuse the push
        return True

    return db.run_in_transaction(resend)


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
