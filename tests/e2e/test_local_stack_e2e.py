"""The local stack as ``python main.py`` runs it: processes that stay apart from other stacks."""
from __future__ import annotations

import select
import socket
from pathlib import Path

import requests


def test_gunicorn_opens_no_control_socket_shared_with_other_stacks(make_stack, tmp_path):
    """gunicorn's control socket defaults to one path per user: parallel stacks would share it."""
    home = tmp_path / "home"
    home.mkdir()
    stack = make_stack(extra_env={"HOME": str(home), "XDG_RUNTIME_DIR": ""})
    assert stack.gunicorn is not None and stack.gunicorn.poll() is None
    assert not (home / ".gunicorn" / "gunicorn.ctl").exists()
    assert not list(Path(home).rglob("*.ctl"))


def _raw_post(port: int, headers: dict[str, str], chunks: int = 0, chunk: bytes = b"") -> bytes:
    """POST /_tasks/deferred over a bare socket; sends ``chunks`` chunks, stopping once the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn.sendall(f"POST /_tasks/deferred HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        for _ in range(chunks):
            if select.select([conn], [], [], 0)[0]:
                break  # the server answered
            try:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # it answered and closed: read what it said
                break
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = conn.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_large_bodies_are_refused_with_413_before_they_are_read(make_stack):
    stack = make_stack(extra_env={"REQUEST_SIZE_LIMIT": "100000"})
    # Content-Length says 200 MB and none of it is sent: the answer comes at once.
    answer = _raw_post(stack.port, {"Content-Length": str(200_000_000)})
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked, no Content-Length: refused once the limit is passed, long before 50 MB are sent.
    answer = _raw_post(stack.port, {"Transfer-Encoding": "chunked"}, chunks=800, chunk=b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert requests.get(stack.url + "/_tasks/list", timeout=30).status_code == 200
