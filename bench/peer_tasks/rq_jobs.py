"""RQ jobs, run by ``rq worker -w rq.SimpleWorker`` (in the worker process, no fork per job)."""
from __future__ import annotations

from bench.peer_tasks import connect, incr_body, stamp_body

_client = connect()


def incr() -> None:
    incr_body(_client)


def stamp(enqueued: float) -> None:
    stamp_body(_client, enqueued)
