"""The WSGI entry point (``gunicorn main:app``) and, run directly, the local development server.

``python main.py`` starts the Datastore emulator, the durable local queue and gunicorn (or granian:
``--server granian`` or ``TASKS_SERVER=granian``) on ``$PORT`` (default 8080), and stops them all on Ctrl-C.
"""
from __future__ import annotations

from core import create_app
from example import MODULES, SessionUsers
from example.users import users_cli

app = create_app(MODULES, users=SessionUsers(), languages=("en", "de"))
app.cli.add_command(users_cli)

if __name__ == "__main__":
    import argparse
    from pathlib import Path

    from core.devserver import run_local
    from core.devserver.servers import add_server_argument

    parser = argparse.ArgumentParser(description="Serve the example app on the local stack until Ctrl-C.")
    add_server_argument(parser)
    run_local("main:app", root=Path(__file__).resolve().parent, server=parser.parse_args().server)
