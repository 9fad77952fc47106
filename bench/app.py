"""The WSGI app the benchmarks serve: the example app plus bare routes and a defer route."""
from __future__ import annotations

import os
from pathlib import Path

from core import create_app
from core.module import Module, exposed
from example import MODULES, SessionUsers
from example.invoices import noop

COUNTER = Path(os.environ.get("BENCH_COUNTER_FILE", os.devnull))


class Bench(Module):
    @exposed
    def defer(self, count: str = "1", track: str = "0") -> str:
        """Defer ``count`` no-op calls in one request (tracked ones with ``track=1``)."""
        for i in range(int(count)):
            noop(i, _track=track == "1")
        return "ok"


app = create_app({**MODULES, "bench": Bench}, users=SessionUsers())


@app.post("/bare/noop")
def bare_noop() -> str:
    """The limit: a no-op POST route of the same app on the same gunicorn."""
    return "ok"


@app.post("/bare/count")
def bare_count() -> str:
    """A no-op that leaves one byte per call in a file (O_APPEND), so a pusher's rate can be read."""
    fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    return "ok"
