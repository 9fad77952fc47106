"""Per-queue dispatch limits and the retry decision, as Cloud Tasks applies them."""
from __future__ import annotations

import collections
import datetime
import math
import time

from core.tasks.queues import QueueConfig, backoff_delay, last_allowed_attempt
from core.tasks.transports.local.rows import FAILED, QUEUED, LeasedTask

_USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"


class QueueState:
    """A queue's runtime state inside the dispatcher: its token bucket, slots and leased rows."""

    __slots__ = (
        "config", "name", "tokens", "refilled", "inflight", "buffer", "empty_version", "next_eta",
        "deadline", "limit", "header",
    )

    def __init__(self, config: QueueConfig, rate_limits: bool, host_header: str) -> None:
        self.config = config
        self.name = config.name
        self.tokens = float(config.bucket_size) if rate_limits else math.inf
        self.refilled = time.monotonic()
        self.inflight = 0
        #: Leased rows waiting for a connection, a rate token or a concurrency slot.
        self.buffer: collections.deque[LeasedTask] = collections.deque()
        #: The store's data version when the queue was last found without due tasks.
        self.empty_version = -1
        self.next_eta: float | None = None
        self.deadline = config.dispatch_deadline.total_seconds()
        self.limit = config.max_concurrent_requests or 1 << 30
        #: The request-line's tail and the header lines every push of this queue starts with.
        self.header = (
            f" HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
            f"X-AppEngine-QueueName: {config.name}\r\nX-AppEngine-TaskName: "
        )

    def refill(self, mono: float) -> None:
        bucket = float(self.config.bucket_size)
        if self.tokens < bucket:
            self.tokens = min(bucket, self.tokens + (mono - self.refilled) * self.config.rate_per_second)
        self.refilled = mono


def next_attempt(config: QueueConfig, attempts: int, first_attempt: float, now: float) -> tuple[int, float]:
    """``(state, eta)`` after a failed attempt: ``QUEUED`` with the backoff's ETA, or ``FAILED``
    once the queue's limits end the task (:func:`~core.tasks.queues.last_allowed_attempt`)."""
    age = datetime.timedelta(seconds=now - first_attempt)
    if last_allowed_attempt(attempts, retry=config.retry, age=age, queue=config.name) is not None:
        return FAILED, now
    return QUEUED, now + backoff_delay(config.retry, attempts)
