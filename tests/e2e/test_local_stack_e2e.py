"""The local stack as ``python main.py`` runs it: processes that stay apart from other stacks."""
from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from core import db
from core.config import Settings
from core.devserver.ports import free_port
from core.devserver.processes import stop_process_group
from core.testing import on_every_server
from tests.e2e.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]


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


@on_every_server
def test_large_bodies_are_refused_with_413_before_they_are_read(make_stack):
    stack = make_stack(extra_env={"REQUEST_SIZE_LIMIT": "100000"})
    # Content-Length says 200 MB and none of it is sent: the answer comes at once.
    answer = _raw_post(stack.port, {"Content-Length": str(200_000_000)})
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked, no Content-Length: refused once the limit is passed, long before 50 MB are sent.
    answer = _raw_post(stack.port, {"Transfer-Encoding": "chunked"}, chunks=800, chunk=b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert requests.get(stack.url + "/_tasks/list", timeout=30).status_code == 200


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _dispatchers(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            if b"core.tasks.transports.local" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            pass
    return found


def test_python_main_restarts_a_killed_dispatcher_and_says_so(tmp_path, datastore_emulator):
    port, log_path = free_port(), tmp_path / "main.log"
    env = {**os.environ, "PORT": str(port), "LOCAL_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)}
    with open(log_path, "wb") as out:
        main = subprocess.Popen([sys.executable, "main.py"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"serving main:app at http" in log_path.read_bytes(), timeout=120,
                 message="python main.py to serve")
        (first,) = _dispatchers(main.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: b"dispatcher restarted" in log_path.read_bytes(), timeout=30,
                 message="the dispatcher to be restarted")
        (second,) = wait_for(lambda: _dispatchers(main.pid), message="the new dispatcher")
        assert second != first and main.poll() is None
        assert b"dispatcher exited with -9; restarting it" in log_path.read_bytes()
        # The restarted dispatcher delivers: a deferred call runs.
        emulator = re.search(rb"Datastore emulator (\S+),", log_path.read_bytes()).group(1).decode()
        db.configure(Settings(project="local-project", datastore_emulator_host=emulator))
        requests.get(f"http://127.0.0.1:{port}/invoices/close_month?month=2026-09", timeout=30).raise_for_status()
        wait_for(lambda: db.get(db.key("invoice_total", "2026-09")), message="the task to run after the restart")
    finally:
        stop_process_group(main, timeout=30)
        db.configure(Settings(project="test-project", datastore_emulator_host=datastore_emulator.host))
