"""The task body every system of ``bench.peers`` runs, and the Redis keys it writes.

Importable from the app's virtualenv and from the peers' (``.venv-bench``): it needs only the
Redis client. Each system's task module wraps these two bodies in its own task decorator.
"""
from __future__ import annotations

import os
import time

import redis

#: Where the benchmark's redis-server listens (set by ``bench.peers`` for every process it starts).
URL_VARIABLE = "BENCH_REDIS_URL"
#: Incremented once by every throughput task.
COUNTER_KEY = "bench:count"
#: One ``"<enqueued> <started>"`` entry (``time.time()`` values) per latency task.
LATENCY_KEY = "bench:latency"


def connect() -> redis.Redis:
    """A client for the benchmark's Redis (connects on first use, not here)."""
    return redis.Redis.from_url(os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379/0"))


def incr_body(client: redis.Redis) -> None:
    """The throughput task: one ``INCR``."""
    client.incr(COUNTER_KEY)


def stamp_body(client: redis.Redis, enqueued: float) -> None:
    """The latency task: the time the body started, beside the time the enqueue call began."""
    client.rpush(LATENCY_KEY, f"{enqueued!r} {time.time()!r}")
