"""The versioned task envelope: what travels in a task's body.

An envelope is tagged JSON (``core.json``) of::

    {"v": 1, "id": <task id>, "kind": "deferred" | "queryIter" | ..., "queue": <queue>,
     "created": <unix seconds>, "env": {"user": <id>, "language": <lang>, "custom": <any>},
     "payload": {...kind specific...}}

When the encoded envelope is larger than the configured limit, its payload is stored in Datastore
(split into entities below Datastore's 1 MiB entity limit) and the envelope carries a reference
with the payload's SHA-256, so the signature over the small body still covers the stored bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from typing import Any

from core import db
from core import json as tagged_json
from core.tasks.errors import PayloadError

ENVELOPE_VERSION = 1
PAYLOAD_KIND = "_tasks_payload"
#: Bytes stored per payload entity (Datastore refuses entities over 1 MiB).
PAYLOAD_CHUNK = 900_000


@dataclasses.dataclass
class Envelope:
    kind: str
    payload: dict[str, Any]
    queue: str
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    created: float = dataclasses.field(default_factory=time.time)
    #: Set when the payload was stored in Datastore: its id and how many entities hold it.
    stored_payload: str | None = None
    stored_chunks: int = 0

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
        entity.update({"data": chunk, "created": time.time()})
        entities.append(entity)
    for entity in entities:  # one commit each: a request near 1 MiB per entity is large enough
        db.put(entity)
    envelope.stored_payload, envelope.stored_chunks = envelope.id, len(chunks)
    reference = {"v": ENVELOPE_VERSION, "id": envelope.id, "kind": envelope.kind, "queue": envelope.queue,
                 "created": envelope.created,
                 "ref": {"id": envelope.id, "chunks": len(chunks), "sha256": digest}}
    return tagged_json.dumps(reference).encode("utf-8")


def decode(body: bytes) -> Envelope:
    """Parse a task body (loading a stored payload); anything wrong raises :class:`PayloadError`."""
    data = _parse(body)
    reference = data.get("ref")
    stored, chunks = None, 0
    if reference is not None:
        if not isinstance(reference, dict):
            raise PayloadError("malformed payload reference")
        data = _parse(_load_stored(reference))
        stored, chunks = str(reference["id"]), int(reference["chunks"])
    try:
        return Envelope(kind=data["kind"], payload=data["payload"], queue=data["queue"],
                        env=data.get("env") or {}, id=data["id"], created=float(data["created"]),
                        stored_payload=stored, stored_chunks=chunks)
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"incomplete task envelope: {exc!r}") from None


def _parse(body: bytes) -> dict[str, Any]:
    try:
        data = tagged_json.loads(body)
    except Exception as exc:  # any decoding failure is a permanent one
        raise PayloadError(f"undecodable task body: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError("task body is not an object")
    if data.get("v") != ENVELOPE_VERSION:
        raise PayloadError(f"unsupported task envelope version {data.get('v')!r}")
    for field, kind in (("kind", str), ("id", str)):
        if not isinstance(data.get(field), kind):
            raise PayloadError(f"task envelope lacks {field!r}")
    return data


def _load_stored(reference: dict[str, Any]) -> bytes:
    try:
        payload_id, count, digest = str(reference["id"]), int(reference["chunks"]), str(reference["sha256"])
    except (KeyError, TypeError, ValueError):
        raise PayloadError("malformed payload reference") from None
    if not 0 < count <= 64:
        raise PayloadError("malformed payload reference")
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
