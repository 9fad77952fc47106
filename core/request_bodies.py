"""A request body must keep arriving: a client that stops sending it gets 408 and loses its connection.

Reading a body blocks the worker thread until the bytes come. A client that declares more body
than it sends would hold that thread until it leaves, and a dozen such clients stop the app
answering anyone. :class:`BodyDeadline`, a WSGI layer in front of Flask that a queue's direct
push (:class:`core.task_routes.DirectPushes`) reads its body through too, bounds every read of a
request body by ``REQUEST_BODY_TIMEOUT`` seconds of silence, as nginx's ``client_body_timeout``
does; a read that waits longer ends in 408 and the connection is closed.

The bound needs the connection's socket, which gunicorn puts in the environ (``gunicorn.socket``):
the read runs on the worker thread with a socket timeout (no extra thread), and an expired read
shuts the socket's receiving side so that gunicorn closes the connection after the 408. A slow
client still holds a thread for up to the timeout: other requests wait at most that long for one.

A server that reads bodies itself gives no socket, and its reads stay unbounded. granian (in Rust)
is one: a read of its ``wsgi.input`` cannot be interrupted from Python (read on a helper thread, it
keeps the request's response from being sent until the client sends the rest or leaves).
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.exceptions import RequestTimeout

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BodyTimeout(RequestTimeout):
    """The client stopped sending the request body it announced (408)."""

    description = "The request body did not arrive in time."


class DeadlineBody:
    """``wsgi.input`` whose every read waits at most ``timeout`` seconds for the client on ``sock``."""

    def __init__(self, inner: Any, timeout: float, sock: socket.socket) -> None:
        self.inner = inner
        self.sock = sock
        self.expired = False
        sock.settimeout(timeout)

    def read(self, size: int = -1) -> bytes:
        return self._bounded(self.inner.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._bounded(self.inner.readline, size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._bounded(self.inner.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _bounded(self, read: Callable[[int], Any], size: int) -> Any:
        if self.expired:
            raise BodyTimeout()
        try:
            return read(size)
        except TimeoutError:
            self.expired = True
            # gunicorn reads the rest of the body before the next request on this connection: let it
            # find the end at once and close the connection rather than wait for the client again.
            try:
                self.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            raise BodyTimeout() from None

    def finished(self) -> None:
        """The response starts: writing it is not bound by the body's timeout."""
        if not self.expired:
            try:
                self.sock.settimeout(None)
            except OSError:
                pass


class BodyDeadline:
    """The WSGI layer that gives every request with a body a :class:`DeadlineBody` and answers 408 for it."""

    def __init__(self, inner: WSGIApp, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout

    def body(self, environ: dict[str, Any]) -> DeadlineBody | None:
        """The request's ``wsgi.input``, bounded; ``None`` where the server gives no socket to bound."""
        sock = environ.get("gunicorn.socket")
        return DeadlineBody(environ["wsgi.input"], self.timeout, sock) if isinstance(sock, socket.socket) else None

    def read(self, environ: dict[str, Any], length: int) -> bytes:
        """``length`` bytes of the body, for a caller that answers by itself; :class:`BodyTimeout` if late."""
        body = self.body(environ)
        if body is None:
            return environ["wsgi.input"].read(length)
        try:
            return body.read(length)
        finally:
            body.finished()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = self.body(environ) if _has_body(environ) else None
        if body is None:
            return self.inner(environ, start_response)
        environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            body.finished()
            return start_response(status, headers, exc_info)

        try:
            return self.inner(environ, start)
        except BodyTimeout as error:  # raised outside Flask's handling of errors
            return error(environ, start)


def _has_body(environ: dict[str, Any]) -> bool:
    return bool(environ.get("HTTP_TRANSFER_ENCODING")) or environ.get("CONTENT_LENGTH", "") not in ("", "0")
