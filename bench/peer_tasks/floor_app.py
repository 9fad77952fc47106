"""The floor of ``bench.peers``: ours' HTTP path and the task body, with none of our code between.

A bare WSGI app, served by the same gunicorn as ours and pushed to by the same dispatcher, runs
the same task body as every system: ``/incr`` one ``INCR``, ``/stamp`` the latency entry (the
request's body is the enqueue time). What a system bound to one HTTP request per task through
gunicorn costs before any task pipeline runs. Tasks are queued by :func:`enqueuers`, one durable
local-queue transaction per call, as a deferred call's transport step makes them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.peer_tasks import connect, incr_body, stamp_body
from core.config import Settings
from core.tasks.runtime import local_queue_path
from core.tasks.transports.base import TaskRequest
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

#: Sent with every floor push: a task's content type and signature header (the app reads neither).
HEADERS = {"Content-Type": "application/json", "X-Tasks-Signature": "t=0,v1=" + "0" * 64}
#: The body of an ``/incr`` push: about the size of an ``INCR`` task's envelope.
INCR_BODY = b"x" * 240

_client = connect()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if environ.get("PATH_INFO") == "/stamp":
        stamp_body(_client, float(body))
    else:
        incr_body(_client)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@contextmanager
def enqueuers() -> Iterator[tuple[Callable[[], Any], Callable[[float], Any]]]:
    """``(incr, stamp)`` into the queue file the app's own local transport uses: one task per call."""
    transport = LocalTransport(LocalQueueStore(local_queue_path(Settings.from_env())))

    def incr() -> None:
        transport.enqueue_many([TaskRequest(queue="default", path="/incr", body=INCR_BODY, headers=HEADERS)])

    def stamp(enqueued: float) -> None:
        transport.enqueue_many([TaskRequest(queue="default", path="/stamp", body=repr(enqueued).encode(),
                                            headers=HEADERS)])

    try:
        yield incr, stamp
    finally:
        transport.close()
