"""Ours: the example app as ``main.py`` builds it, plus the two benchmark tasks as deferred calls.

Served by the local stack's gunicorn (``bench.peers``); the Redis client comes from
``.venv-bench/ours`` on the stack's ``PYTHONPATH``, never from the app's dependencies.
"""
from __future__ import annotations

from flask import current_app

from bench.peer_tasks import connect, incr_body, stamp_body
from core import create_app
from core.tasks import callDeferred
from example import MODULES, SessionUsers

EXTENSION = "bench_redis"


@callDeferred
def incr() -> None:
    incr_body(current_app.extensions[EXTENSION])


@callDeferred
def stamp(enqueued: float) -> None:
    stamp_body(current_app.extensions[EXTENSION], enqueued)


app = create_app(MODULES, users=SessionUsers(), languages=("en", "de"))
app.extensions[EXTENSION] = connect()
