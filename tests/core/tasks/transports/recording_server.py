"""A real HTTP server for the local queue's tests: it records every request it receives."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


@dataclasses.dataclass
class Call:
    """One request as the server saw it."""

    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    received: float
    client_port: int


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class Recorder:
    """A threaded Flask server on a free port; every route records the request first.

    Routes: ``/ok``; ``/status/<code>``; ``/fail/<n>/<key>`` answers 500 to the first ``n`` calls
    per key, then 200; ``/sequence/<key>`` answers the statuses queued in ``sequences[key]``;
    ``/slow/<seconds>`` sleeps (until ``release`` is set) and tracks how many requests run at
    once; ``/slow-first/<seconds>/<key>`` sleeps on the first call per key only; ``/stream``
    answers with a body of unknown length.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.sequences: dict[str, list[int]] = {}
        self.current = 0
        self.max_concurrent = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Condition()
        self.release = threading.Event()  # lets /slow return early when set
        self.app = self._build_app()
        self.server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _build_app(self) -> Flask:
        app = Flask(__name__)

        @app.before_request
        def record() -> None:
            call = Call(
                request.path, request.method, dict(request.headers), request.get_data(), time.time(),
                int(request.environ.get("REMOTE_PORT", 0)),
            )
            with self._lock:
                self.calls.append(call)
                self._lock.notify_all()

        @app.route("/ok", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
        def ok() -> tuple[str, int]:
            return "done", 200

        @app.route("/status/<int:code>", methods=["POST", "GET"])
        def status(code: int) -> tuple[str, int]:
            return f"status {code}", code

        @app.post("/fail/<int:times>/<key>")
        def fail(times: int, key: str) -> tuple[str, int]:
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + 1
                count = self._counts[key]
            return ("boom", 500) if count <= times else ("fine", 200)

        @app.post("/sequence/<key>")
        def sequence(key: str) -> tuple[str, int]:
            with self._lock:
                code = self.sequences[key].pop(0)
            return f"answer {code}", code

        @app.post("/slow/<float:seconds>")
        def slow(seconds: float) -> tuple[str, int]:
            with self._lock:
                self.current += 1
                self.max_concurrent = max(self.max_concurrent, self.current)
            try:
                self.release.wait(seconds)
            finally:
                with self._lock:
                    self.current -= 1
            return "slept", 200

        @app.post("/slow-first/<float:seconds>/<key>")
        def slow_first(seconds: float, key: str) -> tuple[str, int]:
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + 1
                first = self._counts[key] == 1
            if first:
                self.release.wait(seconds)
            return "done", 200

        @app.post("/stream")
        def stream() -> Response:
            return Response((part for part in [b"a" * 10, b"b" * 5000, b"c"]), mimetype="text/plain")

        return app

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def calls_to(self, prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.startswith(prefix)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Block until ``predicate()`` holds (re-checked on every recorded call)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout} s; calls: {len(self.calls)}")
                self._lock.wait(min(left, 0.05))

    def wait_calls(self, prefix: str, count: int, timeout: float = 20.0) -> list[Call]:
        self.wait_for(lambda: sum(c.path.startswith(prefix) for c in self.calls) >= count, timeout)
        return self.calls_to(prefix)
