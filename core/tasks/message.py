"""The versioned task envelope: what travels in a task's body.

An envelope is tagged JSON (``core.json``) of::

    {"v": 1, "id": <task id>, "kind": "deferred" | "queryIter" | ..., "queue": <queue>,
     "created": <unix seconds>, "env": {"user": <id>, "language": <lang>, "custom": <any>},
     "payload": {...kind specific...}, "record": {...}}

``record`` is there when the send path wrote the task's record itself: what a first attempt needs
to claim it without reading it first (:mod:`core.tasks.records`); it is added to the encoded body
(:func:`with_record`), so an envelope encodes once.

When the encoded envelope is larger than the configured limit, its payload is stored in Datastore
(split into entities below Datastore's 1 MiB entity limit) and the envelope carries a reference
with the payload's SHA-256, so the signature over the small body still covers the stored bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from typing import Any

from core import db
from core import json as tagged_json
from core.clock import utc_now
from core.reprs import safe_repr
from core.tasks.errors import PayloadError

ENVELOPE_VERSION = 1
PAYLOAD_KIND = "_tasks_payload"
#: Bytes stored per payload entity (Datastore refuses entities over 1 MiB).
PAYLOAD_CHUNK = 900_000
#: Most entities one stored payload may span (a reference asking for more is malformed).
MAX_CHUNKS = 64
#: Longest user id an envelope may carry (a Datastore key name is at most 1,500 bytes).
MAX_USER_ID = 500
#: Task ids as :class:`Envelope` makes them, and as Cloud Tasks accepts them.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")


#: A UUID's version nibble and variant bits, cleared and set to make random bits a version-4 UUID.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_task_id() -> str:
    """A random version-4 UUID in 32 hex digits, as ``uuid.uuid4().hex`` writes it, without making a
    ``UUID`` object (one per task sent)."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


@dataclasses.dataclass
class Envelope:
    kind: str
    payload: dict[str, Any]
    queue: str
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=new_task_id)
    created: float = dataclasses.field(default_factory=lambda: utc_now().timestamp())
    #: Set when the payload was stored in Datastore: its id and how many entities hold it.
    stored_payload: str | None = None
    stored_chunks: int = 0
    #: What the send path knew of the task's record when it wrote it (see the module's docstring).
    record: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"v": ENVELOPE_VERSION, "id": self.id, "kind": self.kind, "queue": self.queue,
                "created": self.created, "env": self.env, "payload": self.payload}


def encode(envelope: Envelope, *, limit: int) -> bytes:
    """The body for ``envelope``; payloads over ``limit`` bytes are stored and referenced.

    Raises ``TypeError`` naming the offending value when something can't be encoded.
    """
    body = tagged_json.dumps(envelope.to_json(), path="task").encode("utf-8")
    if len(body) <= limit:
        return body
    digest = hashlib.sha256(body).hexdigest()
    chunks = [body[i:i + PAYLOAD_CHUNK] for i in range(0, len(body), PAYLOAD_CHUNK)]
    entities = []
    for index, chunk in enumerate(chunks):
        entity = db.Entity(db.key(PAYLOAD_KIND, f"{envelope.id}-{index}"), exclude_from_indexes=("data",))
        entity.update({"data": chunk, "created": utc_now().timestamp()})
        entities.append(entity)
    for entity in entities:  # one commit each: a request near 1 MiB per entity is large enough
        db.put(entity)
    envelope.stored_payload, envelope.stored_chunks = envelope.id, len(chunks)
    reference = {"v": ENVELOPE_VERSION, "id": envelope.id, "kind": envelope.kind, "queue": envelope.queue,
                 "created": envelope.created,
                 "ref": {"id": envelope.id, "chunks": len(chunks), "sha256": digest}}
    return tagged_json.dumps(reference).encode("utf-8")


def with_record(body: bytes, record: dict[str, Any], *, limit: int) -> bytes:
    """``body`` (an encoded envelope) with ``record`` as its ``record`` field; as it was if that outgrows ``limit``.

    The body is a JSON object: the field goes in before its closing brace, and the envelope is
    not encoded again.
    """
    field = b',"record":' + tagged_json.dumps(record, path="record").encode("utf-8")
    if not body.endswith(b"}") or len(body) + len(field) > limit:
        return body
    return body[:-1] + field + b"}"


def decode(body: bytes) -> Envelope:
    """Parse a task body (loading a stored payload); anything wrong raises :class:`PayloadError`."""
    data = _parse(body)
    record = data.get("record")
    reference = data.get("ref")
    stored, chunks = None, 0
    if reference is not None:
        if not isinstance(reference, dict):
            raise PayloadError("malformed payload reference")
        stored, chunks, _ = _reference_fields(reference)
        data = _parse(_load_stored(reference))
    for field in ("kind", "payload", "queue", "id", "created"):
        if field not in data:
            raise PayloadError(f"incomplete task envelope: no {field!r}")
    return Envelope(kind=data["kind"], payload=_checked_payload(data["payload"]), queue=_checked_queue(data["queue"]),
                    env=_checked_env(data.get("env")), id=data["id"], created=_checked_created(data["created"]),
                    stored_payload=stored, stored_chunks=chunks, record=record if isinstance(record, dict) else None)


def _checked_payload(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise PayloadError(f"task payload is a {type(payload).__name__}, not an object")
    return payload


def _checked_queue(queue: Any) -> str:
    if not isinstance(queue, str):
        raise PayloadError(f"task queue is a {type(queue).__name__}, not a string")
    return queue


def _checked_created(created: Any) -> float:
    if type(created) not in (int, float):
        raise PayloadError(f"task creation time is a {type(created).__name__}, not a number")
    try:
        value = float(created)
    except OverflowError:
        raise PayloadError("task creation time is out of range") from None
    if not math.isfinite(value):
        raise PayloadError("task creation time is not finite")
    return value


def _checked_env(env: Any) -> dict[str, Any]:
    """The caller's environment: an object whose user id and language have the types a caller sends."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise PayloadError(f"task environment is a {type(env).__name__}, not an object")
    user = env.get("user")
    if user is not None and (type(user) not in (str, int) or (isinstance(user, str) and not user)
                             or len(str(user)) > MAX_USER_ID):
        raise PayloadError("task environment has a malformed user id")
    if env.get("language") is not None and not isinstance(env["language"], str):
        raise PayloadError("task environment has a malformed language")
    return env


def _parse(body: bytes) -> dict[str, Any]:
    try:
        # This app's own bodies are UTF-8 JSON objects: read as such, without guessing their encoding.
        data = tagged_json.loads(body.decode("utf-8") if body[:1] == b"{" else body)
    except Exception as exc:  # any decoding failure is a permanent one
        raise PayloadError(f"undecodable task body: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError("task body is not an object")
    if data.get("v") != ENVELOPE_VERSION:
        raise PayloadError(f"unsupported task envelope version {safe_repr(data.get('v'))}")
    if not isinstance(data.get("kind"), str):
        raise PayloadError("task envelope lacks 'kind'")
    if not (isinstance(data.get("id"), str) and _ID_RE.fullmatch(data["id"])):
        raise PayloadError("task envelope lacks a well-formed 'id'")
    return data


def _reference_fields(reference: dict[str, Any]) -> tuple[str, int, str]:
    """Id, chunk count and digest of a stored-payload reference, checked."""
    payload_id, count, digest = reference.get("id"), reference.get("chunks"), reference.get("sha256")
    if not (isinstance(payload_id, str) and _ID_RE.fullmatch(payload_id) and type(count) is int
            and 0 < count <= MAX_CHUNKS and isinstance(digest, str)):
        raise PayloadError("malformed payload reference")
    return payload_id, count, digest


def _load_stored(reference: dict[str, Any]) -> bytes:
    payload_id, count, digest = _reference_fields(reference)
    # One lookup per chunk: a gRPC answer is capped at 4 MiB.
    entities = [db.get(db.key(PAYLOAD_KIND, f"{payload_id}-{i}")) for i in range(count)]
    if any(e is None for e in entities):
        raise PayloadError(f"stored payload {payload_id} is missing")
    body = b"".join(bytes(e["data"]) for e in entities if e is not None)
    if hashlib.sha256(body).hexdigest() != digest:
        raise PayloadError(f"stored payload {payload_id} does not match its digest")
    return body


def delete_stored(envelope: Envelope) -> None:
    """Remove a stored payload once its task has succeeded."""
    if envelope.stored_payload is None:
        return
    db.delete([db.key(PAYLOAD_KIND, f"{envelope.stored_payload}-{i}") for i in range(envelope.stored_chunks)])
