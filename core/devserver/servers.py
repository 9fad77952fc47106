"""The HTTP servers the local stack runs an app on: gunicorn (as app.yaml's entrypoint) or granian.

- ``gunicorn``: threaded workers (gthread), what App Engine runs; the default.
- ``granian``: a server written in Rust (the ``lean`` extra): it parses HTTP outside Python, so a
  request costs the app's workers far less CPU. It is run with ``--respawn-failed-workers``: without
  it a worker that dies (killed, out of memory) takes the whole server down.

The choice: ``LocalStack(server=...)``, ``python main.py --server granian``, ``python -m core.devserver
--server granian``, or ``TASKS_SERVER`` in the environment.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from core.config import DEFAULT_SERVER, SERVERS

#: The environment variable that picks the server when no flag or argument does.
SERVER_VARIABLE = "TASKS_SERVER"


def checked_server(name: str) -> str:
    """``name`` if it is a server the stack can run, else a ``ValueError`` naming the choices."""
    if name not in SERVERS:
        raise ValueError(f"unknown server {name!r} (TASKS_SERVER / --server): choose one of {', '.join(SERVERS)}")
    return name


def server_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The server ``TASKS_SERVER`` names, or gunicorn."""
    env = os.environ if environ is None else environ
    return checked_server(env.get(SERVER_VARIABLE, "").strip().lower() or DEFAULT_SERVER)


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--server`` flag of the commands that start a local stack."""
    parser.add_argument("--server", choices=SERVERS, default=None,
                        help=f"HTTP server of the app (default: ${SERVER_VARIABLE}, else {DEFAULT_SERVER})")


def server_command(server: str, *, app_module: str, port: int, workers: int, threads: int,
                   worker_class: str = "gthread") -> list[str]:
    """The command line that serves ``app_module`` (``module:app``, or ``module:factory()``) on 127.0.0.1:``port``."""
    if checked_server(server) == "granian":
        factory = ("--factory",) if app_module.endswith("()") else ()
        return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), "--blocking-threads", str(threads), "--http", "1", "--no-ws",
                "--respawn-failed-workers", "--respawn-interval", "0.5", "--workers-kill-timeout", "5",
                *factory, app_module.removesuffix("()")]
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", worker_class, "--threads", str(threads), "--graceful-timeout", "5", "--timeout", "120",
            # Its default path is one per user: parallel stacks would share (and steal) it.
            "--no-control-socket", app_module]
