"""Just enough HTTP/1.1 for the dispatcher: requests over non-blocking sockets, one per connection at a time.

A single-threaded event loop over epoll (poll(2) where there is no epoll), with keep-alive when the
server offers it. On the two-core machines this runs on, where the dispatcher shares the CPU with
the app it pushes to, such a loop costs clearly less per request than asyncio's transports or
streams did. Per request it makes one ``send`` and, on loopback, usually one ``recv``; the
response head is read with one regular expression, and bodies of 2xx answers are not kept.

:class:`Pusher` knows nothing of tasks: a push carries an opaque ``job`` that comes back in
exactly one of its callbacks (a response, a failure, a timeout) unless :meth:`Pusher.abandon`
hands it back at shutdown.
"""
from __future__ import annotations

import errno
import os
import re
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

_SENDING, _RECEIVING, _IDLE = range(3)
_IN, _OUT = select.POLLIN, select.POLLOUT
_MAX_HEAD = 64 * 1024
#: Bytes of an error response's body kept for the task's error text.
_KEEP_BODY = 512
#: The response head fields framing needs, in a lower-cased head.
_FIELDS_RE = re.compile(rb"\r\n(connection|content-length|transfer-encoding):[ \t]*([^\r\n]*)")


class _Counters(Protocol):
    connections: int


class Poller:
    """Readiness of file descriptors: epoll where the OS has it, poll(2) elsewhere."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._poller = select.epoll() if self._epoll else select.poll()
        self.register = self._poller.register
        self.modify = self._poller.modify
        self.unregister = self._poller.unregister
        #: epoll forgets a descriptor when it is closed, which saves a system call per connection.
        self.forgets_closed = self._epoll

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poller.poll(timeout if self._epoll else timeout * 1000.0)

    def close(self) -> None:
        if self._epoll:
            self._poller.close()  # type: ignore[union-attr]


class Connection:
    """One TCP connection to the app and the exchange in progress on it."""

    __slots__ = (
        "sock", "fd", "state", "mask", "reused", "job", "head_request", "payload", "sent", "started",
        "deadline", "buf", "status", "head_done", "remaining", "chunked", "trailers", "until_eof",
        "keep_alive", "body",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _SENDING
        self.mask = 0
        self.reused = False
        self.job: Any = None
        self.head_request = False
        self.payload = b""
        self.sent = 0
        self.started = 0.0
        self.deadline = 0.0
        self.reset_response()

    def reset_response(self) -> None:
        self.buf = b""
        self.status = 0
        self.head_done = False
        self.remaining = 0
        self.chunked = False
        self.trailers = False
        self.until_eof = False
        self.keep_alive = False
        self.body = b""

    def feed(self, data: bytes) -> bool:
        """Take response bytes; True once the response is complete. Raises ValueError on garbage."""
        if not self.head_done and not self.buf and data[9:12] == b"200":
            # The common case, read in one piece: "HTTP/1.1 200 ...", a Content-Length, no body kept.
            end = data.find(b"\r\n\r\n")
            if end > 0 and data[:8] == b"HTTP/1.1" and data[8] == 32:
                fields = dict(_FIELDS_RE.findall(data[:end].lower()))
                length = fields.get(b"content-length")
                if length is not None and b"transfer-encoding" not in fields and not self.head_request:
                    self.status, self.head_done = 200, True
                    self.keep_alive = b"close" not in fields.get(b"connection", b"")
                    self.remaining = int(length) - (len(data) - end - 4)
                    return self.remaining <= 0
        if self.buf:
            data, self.buf = self.buf + data, b""
        if not self.head_done:
            while True:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        raise ValueError("response head too large")
                    self.buf = data
                    return False
                head, data = data[:end].lower(), data[end + 4 :]
                if not head.startswith(b"http/1.") or head[8:9] != b" ":
                    raise ValueError("not an HTTP/1.x response")
                status = int(head[9:12])
                if status >= 200:
                    break  # below: an interim response; the final one follows
            self.status, self.head_done = status, True
            fields = dict(_FIELDS_RE.findall(head))
            connection = fields.get(b"connection", b"")
            if head[7:8] == b"0":
                self.keep_alive = b"keep-alive" in connection
            else:
                self.keep_alive = b"close" not in connection
            if self.head_request or status in (204, 304):
                self.remaining = 0
            elif b"chunked" in fields.get(b"transfer-encoding", b""):
                self.chunked = True
            elif length := fields.get(b"content-length", b"").strip():
                self.remaining = int(length)
            else:
                self.until_eof, self.keep_alive = True, False
        if data and self.status >= 300 and len(self.body) < _KEEP_BODY:
            self.body += data[: _KEEP_BODY - len(self.body)]
        if self.chunked:
            return self._feed_chunks(data)
        if self.until_eof:
            return False
        self.remaining -= len(data)
        return self.remaining <= 0

    def _feed_chunks(self, buf: bytes) -> bool:
        # ``remaining`` counts the bytes of the current chunk's data and its closing CRLF.
        while True:
            if self.remaining:
                take = min(self.remaining, len(buf))
                buf, self.remaining = buf[take:], self.remaining - take
                if self.remaining:
                    return False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                self.buf = buf
                return False
            line, buf = buf[:line_end], buf[line_end + 2 :]
            if self.trailers:
                if not line:
                    return True
                continue
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                self.trailers = True
            else:
                self.remaining = size + 2


class Pusher:
    """Sends requests to one HTTP/1.1 server, at most ``max_connections`` at once.

    ``on_response(job, started, status, body)`` gets the status and the first bytes of a non-2xx
    body; ``on_failure(job, started, error)`` a connection that failed before a complete response;
    ``on_timeout(job, started)`` a push past its deadline (see :meth:`expire`). A kept-alive
    connection the server closed meanwhile is retried once on a new connection, unseen.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        counters: _Counters,
        on_response: Callable[[Any, float, int, bytes], None],
        on_failure: Callable[[Any, float, str], None],
        on_timeout: Callable[[Any, float], None],
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the local queue pushes to plain http:// URLs, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        #: The ``Host`` header's value and the path prefix of every request.
        self.host_header = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max(1, max_connections)
        #: False while stopping: connections are closed after their response.
        self.reuse = True
        self.active: set[Connection] = set()
        self._idle: list[Connection] = []
        self._counters = counters
        self._on_response, self._on_failure, self._on_timeout = on_response, on_failure, on_timeout
        self._addr: tuple[Any, ...] = ()
        self._family = socket.AF_INET
        self._poller: Poller | None = None
        self._by_fd: dict[int, Connection] = {}
        self._readers: dict[int, Callable[[], None]] = {}

    def open(self) -> None:
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        # "localhost" may resolve to ::1 first while dev servers listen on 127.0.0.1 only.
        family, _, _, _, addr = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
        self._family, self._addr = family, addr
        self._poller = Poller()
        self._by_fd, self._readers = {}, {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` from :meth:`poll` whenever ``fd`` (not a connection) is readable."""
        assert self._poller is not None
        self._poller.register(fd, _IN)
        self._readers[fd] = callback

    def push(self, job: Any, payload: bytes, *, head_request: bool, started: float, deadline: float,
             fresh: bool = False) -> None:
        """Send ``payload`` (a whole request) on an idle connection, or a new one; give up on it
        at ``deadline`` (``time.monotonic()``), see :meth:`expire`."""
        conn: Connection | None
        if self._idle and not fresh:
            conn = self._idle.pop()
            conn.reused = True
        else:
            conn = self._connect(job, started)
        if conn is None:
            return
        conn.job, conn.head_request, conn.payload, conn.sent = job, head_request, payload, 0
        conn.started, conn.deadline = started, deadline
        conn.state = _SENDING
        self.active.add(conn)
        # Loopback connects finish at once; sending right away saves a trip through the poller.
        self._write(conn)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for readiness and handle what became ready."""
        assert self._poller is not None
        by_fd = self._by_fd
        for fd, _events in self._poller.poll(timeout):
            conn = by_fd.get(fd)
            if conn is None:
                self._readers[fd]()
            elif conn.state == _RECEIVING:
                self._read(conn)
            elif conn.state == _SENDING:
                self._write(conn)
            else:  # an idle kept-alive connection became readable: the server closed it
                self._idle.remove(conn)
                self._close(conn)

    def expire(self, mono: float) -> None:
        """End every push whose deadline passed (``on_timeout``)."""
        for conn in [c for c in self.active if c.deadline <= mono]:
            job, started = conn.job, conn.started
            self._release(conn, keep=False)
            self._on_timeout(job, started)

    def abandon(self) -> list[Any]:
        """Close every connection; return the jobs of pushes still in flight."""
        jobs = [conn.job for conn in self.active if conn.job is not None]
        for conn in [*self.active, *self._idle]:
            self._close(conn)
        self.active, self._idle = set(), []
        return jobs

    def close(self) -> None:
        self.abandon()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        self._by_fd, self._readers = {}, {}

    # one exchange

    def _connect(self, job: Any, started: float) -> Connection | None:
        try:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
        except OSError as exc:
            self._on_failure(job, started, f"socket: {exc.strerror or exc}")
            return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self._addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self._on_failure(job, started, f"connect: {os.strerror(err)}")
            return None
        self._counters.connections += 1
        return Connection(sock)

    def _register(self, conn: Connection, mask: int) -> None:
        if conn.mask != mask:
            assert self._poller is not None
            if conn.mask:
                self._poller.modify(conn.fd, mask)
            else:
                self._poller.register(conn.fd, mask)
                self._by_fd[conn.fd] = conn
            conn.mask = mask

    def _write(self, conn: Connection) -> None:
        try:
            if conn.sent:
                sent = conn.sock.send(memoryview(conn.payload)[conn.sent :])
            else:
                sent = conn.sock.send(conn.payload)
        except (BlockingIOError, InterruptedError):
            self._register(conn, _OUT)
            return
        except OSError as exc:
            self._broken(conn, f"send: {exc.strerror or exc}")
            return
        conn.sent += sent
        if conn.sent < len(conn.payload):
            self._register(conn, _OUT)
        else:
            conn.state = _RECEIVING
            if conn.mask != _IN:
                self._register(conn, _IN)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(conn, f"recv: {exc.strerror or exc}")
            return
        if not data:
            if conn.until_eof:
                self._answered(conn)
            else:
                self._broken(conn, "the app closed the connection before a complete response")
            return
        try:
            complete = conn.feed(data)
        except ValueError as exc:
            self._broken(conn, f"bad response: {exc}")
            return
        if complete:
            self._answered(conn)

    def _answered(self, conn: Connection) -> None:
        job, started, status, body = conn.job, conn.started, conn.status, conn.body
        self._release(conn, keep=conn.keep_alive)
        self._on_response(job, started, status, body)

    def _broken(self, conn: Connection, error: str) -> None:
        """The connection failed before a complete response arrived."""
        job, payload, started, head_request = conn.job, conn.payload, conn.started, conn.head_request
        stale = conn.reused and not conn.head_done and not conn.buf
        deadline = conn.deadline
        self._release(conn, keep=False)
        if stale:
            # A kept-alive connection the server had closed meanwhile: resend on a new one.
            self.push(job, payload, head_request=head_request, started=started, deadline=deadline, fresh=True)
            return
        self._on_failure(job, started, error)

    def _release(self, conn: Connection, *, keep: bool) -> None:
        self.active.discard(conn)
        conn.job = None
        conn.payload = b""
        if keep and self.reuse and len(self._idle) < self.max_connections:
            conn.reset_response()
            conn.state = _IDLE
            if conn.mask != _IN:
                self._register(conn, _IN)
            self._idle.append(conn)
        else:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if conn.mask and self._poller is not None:
            if not self._poller.forgets_closed:
                self._poller.unregister(conn.fd)
            del self._by_fd[conn.fd]
        conn.mask = 0
        self.active.discard(conn)
        conn.sock.close()
