"""The app :mod:`bench.local_queue` measures latency on: one deferred task that reports its start."""
from __future__ import annotations

import socket

from flask import Flask

from core import create_app
from core.config import Settings
from core.tasks import callDeferred

_reporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@callDeferred
def stamp(port: int, i: int) -> None:
    """Sends ``i`` to ``127.0.0.1:port`` first thing: the moment the task body starts."""
    if port:
        _reporter.sendto(str(i).encode(), ("127.0.0.1", port))


def create_latency_app(settings: Settings | None = None) -> Flask:
    return create_app({}, settings=settings, startup_tasks=False)


app = create_latency_app()
