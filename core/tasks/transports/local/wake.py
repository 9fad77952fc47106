"""Waking the dispatcher when tasks are enqueued: one datagram after each committed batch.

The dispatcher of a queue file listens on a datagram socket named after that file; the transport
sends an empty datagram to it after every transaction that added tasks. The datagram only says
"look now": a lost one (no dispatcher listening, a full socket buffer, another network namespace)
delays a task until the dispatcher's fallback poll, never loses it, because the task is already in
SQLite. Sending never blocks and never fails an enqueue.

On Linux the socket lives in the abstract namespace (no file to clean up, no path length limit);
elsewhere it is a socket file beside the queue file, when its path is short enough for one.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path

#: AF_UNIX paths are limited to about 104 (BSD) to 108 (Linux) bytes.
_MAX_PATH = 100


def wake_address(db_path: Path) -> str | bytes | None:
    """The datagram socket address of the dispatcher serving ``db_path``, or None if there is none."""
    resolved = str(Path(db_path).resolve())
    if sys.platform.startswith("linux"):
        return b"\0core-tasks-local-queue/" + hashlib.sha256(resolved.encode()).hexdigest()[:40].encode()
    path = resolved + ".wake"
    return path if len(os.fsencode(path)) < _MAX_PATH else None


class WakeSender:
    """Sends the "tasks were added" datagram for one queue file (transport side)."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._resolved = False

    def notify(self) -> None:
        """Wake the dispatcher if one listens; never blocks, never raises."""
        try:
            if not self._resolved:
                self._address = wake_address(self._db_path)
                self._resolved = True
            if self._address is None:
                return
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(b"", self._address)
        except OSError:
            pass  # nobody listening, a full buffer, ...: the fallback poll finds the task

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class WakeListener:
    """The dispatcher's end: a non-blocking datagram socket to wait on with the other sockets."""

    def __init__(self, sock: socket.socket, path: str | None) -> None:
        self.sock = sock
        self._path = path

    @classmethod
    def bind(cls, db_path: Path) -> WakeListener | None:
        """Listen for the queue file's wakeups; None where no socket can be bound (then: poll).

        Only the dispatcher holding the queue's lock calls this, so a socket file left behind by
        a dead dispatcher can safely be removed first.
        """
        address = wake_address(db_path)
        if address is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if isinstance(address, str) and os.path.exists(address):
                os.unlink(address)
            sock.bind(address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        return cls(sock, address if isinstance(address, str) else None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Read every pending datagram: any number of wakeups is one look at the store."""
        recv = self.sock.recv
        try:
            while True:
                recv(16)
        except OSError:  # BlockingIOError once empty
            pass

    def close(self) -> None:
        self.sock.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
