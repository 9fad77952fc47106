"""The recipe for an outgoing task request: an encoded envelope, signed for the path it is pushed to.

The send path (:mod:`core.tasks.send`) is what the app sends through: it signs here, so the headers
a queue delivers and the signature the verifier checks always agree. Nothing else in the app hands
a request to a queue; tests use :func:`build_request` to forge what a queue delivers.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from core.tasks import message
from core.tasks.auth.signing import SIGNATURE_HEADER
from core.tasks.transports.base import TaskRequest

if TYPE_CHECKING:
    from core.tasks.runtime import TaskRuntime


def signed_request(runtime: TaskRuntime, queue: str, path: str, body: bytes, *,
                   name: str | None = None, eta: datetime.datetime | None = None,
                   target_version: str | None = None,
                   dispatch_deadline: datetime.timedelta | None = None) -> TaskRequest:
    """A ``POST`` of ``body`` (an encoded envelope) to ``path`` on ``queue``, signed with the app's secret."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: runtime.signing_keys.sign("POST", path, body)}
    return TaskRequest(queue=queue, path=path, body=body, headers=headers, name=name, eta=eta,
                       target_version=target_version, dispatch_deadline=dispatch_deadline)


def build_request(runtime: TaskRuntime, envelope: message.Envelope, path: str, *,
                  name: str | None = None, eta: datetime.datetime | None = None,
                  target_version: str | None = None,
                  dispatch_deadline: datetime.timedelta | None = None) -> TaskRequest:
    """Encode, sign and address an envelope: the request a queue will push back to ``path``."""
    body = message.encode(envelope, limit=runtime.settings.tasks_payload_limit)
    return signed_request(runtime, envelope.queue, path, body, name=name, eta=eta,
                          target_version=target_version, dispatch_deadline=dispatch_deadline)
