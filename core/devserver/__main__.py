"""``python -m core.devserver [module:app]``: serve an app on the local stack until Ctrl-C."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.devserver.servers import add_server_argument
from core.devserver.stack import run_local


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.devserver", description=__doc__)
    parser.add_argument("app", nargs="?", default="main:app", help="WSGI app as gunicorn names it (default main:app)")
    parser.add_argument("--port", type=int, default=None, help="port of the app (default $PORT or 8080)")
    parser.add_argument("--root", type=Path, default=None,
                        help="project folder with queue.yaml, cron.yaml and .local-data (default: working directory)")
    add_server_argument(parser)
    args = parser.parse_args(argv)
    run_local(args.app, root=args.root, port=args.port, server=args.server)


if __name__ == "__main__":
    main()
