"""dramatiq with its Redis broker: ``dramatiq bench.peer_tasks.dramatiq_actors``."""
from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peer_tasks import URL_VARIABLE, connect, incr_body, stamp_body

dramatiq.set_broker(RedisBroker(url=os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379/0")))

_client = connect()


@dramatiq.actor(max_retries=0)
def incr() -> None:
    incr_body(_client)


@dramatiq.actor(max_retries=0)
def stamp(enqueued: float) -> None:
    stamp_body(_client, enqueued)
