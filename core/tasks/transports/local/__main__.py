"""``python -m core.tasks.transports.local``: run a dispatcher in the foreground until SIGTERM or SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from core.tasks.queues import QueueTable
from core.tasks.transports.local.dispatcher import LocalDispatcher
from core.tasks.transports.local.store import LocalQueueStore

log = logging.getLogger("core.tasks.transports.local")


def main(argv: Sequence[str] | None = None) -> int:
    """Push the tasks of a queue file to an app until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m core.tasks.transports.local",
        description="Push the tasks of a local queue file to an app over HTTP, the way Cloud Tasks does.",
    )
    parser.add_argument("--db", required=True, type=Path, help="the queue's SQLite file")
    parser.add_argument("--url", required=True, help="the app's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--queue-yaml", type=Path, help="queue.yaml with rates, limits and retries")
    parser.add_argument("--max-connections", type=int, default=64, help="open connections at most (64)")
    parser.add_argument("--no-rate-limits", action="store_true", help="ignore queue rates (benchmarks)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds pushes in flight get on stop (5)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="seconds between looks for tasks whose wakeup was lost (1)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # The same loader as the app's runtime, so both sides of the queue share one table.
    queues = QueueTable.load(args.queue_yaml) if args.queue_yaml else QueueTable({})
    dispatcher = LocalDispatcher(
        LocalQueueStore(args.db, queues=queues), args.url, queues, max_connections=args.max_connections,
        rate_limits=not args.no_rate_limits, poll_interval=args.poll_interval,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dispatcher.request_stop(args.grace)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("pushing tasks of %s to %s (queues: %s)", args.db, args.url, ", ".join(sorted(queues)))
    dispatcher.run_forever()
    stats = dispatcher.stats
    log.info("stopped after %d attempt(s) over %d connection(s): %d succeeded, %d retried, %d failed",
             stats.attempts, stats.connections, stats.succeeded, stats.retried, stats.failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
