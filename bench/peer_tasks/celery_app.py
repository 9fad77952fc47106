"""Celery 5 with its Redis broker: ``celery -A bench.peer_tasks.celery_app worker``."""
from __future__ import annotations

import os

from celery import Celery

from bench.peer_tasks import URL_VARIABLE, connect, incr_body, stamp_body

app = Celery("bench", broker=os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)

#: Connects lazily, in each pool process (the client's pool notices the fork).
_client = connect()


@app.task
def incr() -> None:
    incr_body(_client)


@app.task
def stamp(enqueued: float) -> None:
    stamp_body(_client, enqueued)
