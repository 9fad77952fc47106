"""Task metrics of one app: counted in memory per queue and target, added to Datastore every few seconds,
and exported through OpenTelemetry metrics when the app configured a meter provider (the ``otel`` extra).

Counted: tasks enqueued; runs that succeeded, will be retried, or were given up (a dead letter);
requests answered without a run (a lock held, a task ended or cancelled before); run durations.
The hot path only adds to a table under a lock: no Datastore operation and no network call per task.
The table goes to Datastore (:mod:`core.tasks.metrics_store`) on the app's background threads at
most every ``flush_every`` seconds, and when the runtime closes. OpenTelemetry instruments:
``tasks.enqueued`` and ``tasks.runs`` (counters, attribute ``tasks.outcome`` on runs) and
``tasks.run.duration`` (a histogram, seconds), each with ``tasks.queue`` and ``tasks.target``.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from core import clock
from core.tasks import metrics_store
from core.tasks.metrics_store import StatsTable, TargetStats

otel_metrics: ModuleType | None  # None when the optional extra is not installed
try:
    from opentelemetry import metrics as otel_metrics
except ImportError:  # the optional extra is not installed: the dashboard's metrics still work
    otel_metrics = None

log = logging.getLogger(__name__)

METER_NAME = "core.tasks"
OUTCOMES = ("succeeded", "retried", "dead_letters", "skipped")


class _Instruments:
    """The OpenTelemetry instruments, made once the app has a real meter provider."""

    def __init__(self, meter: Any) -> None:
        self.enqueued = meter.create_counter("tasks.enqueued", unit="{task}", description="Tasks enqueued")
        self.runs = meter.create_counter("tasks.runs", unit="{run}", description="Task requests, by outcome")
        self.duration = meter.create_histogram("tasks.run.duration", unit="s", description="Run durations")


def _instruments(provider: Any = None) -> _Instruments | None:
    if otel_metrics is None:
        return None
    provider = provider if provider is not None else otel_metrics.get_meter_provider()
    if type(provider).__name__ in {"NoOpMeterProvider", "_ProxyMeterProvider"}:
        return None  # no provider configured: no-op instruments would cost time and say nothing
    return _Instruments(provider.get_meter(METER_NAME))


class TaskMetrics:
    """The metrics recorder of one app runtime.

    ``submit`` runs a flush off the request (the runtime's background threads); ``instance`` names
    this process's buckets (several instances each add to their own).
    """

    def __init__(self, submit: Callable[[Callable[[], None]], None], *, flush_every: float = 10.0,
                 instance: str | None = None) -> None:
        self.flush_every = flush_every
        self.instance = instance or uuid.uuid4().hex[:12]
        self._submit = submit
        self._pending: StatsTable = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._flushing = False
        self._instruments: _Instruments | None = None
        self._instruments_checked = 0.0

    def use_meter_provider(self, provider: Any) -> None:
        """Export through ``provider`` instead of OpenTelemetry's global one (tests, several apps)."""
        self._instruments = _instruments(provider)

    def _otel(self) -> _Instruments | None:
        # A provider may be configured after the app was built: look again now and then, not per task.
        if self._instruments is None and time.monotonic() - self._instruments_checked > 5.0:
            self._instruments_checked = time.monotonic()
            self._instruments = _instruments()
        return self._instruments

    def _stats(self, queue: str, target: str) -> TargetStats:
        stats = self._pending.get((queue, target))
        if stats is None:
            stats = self._pending[(queue, target)] = TargetStats()
        return stats

    def enqueued(self, queue: str, target: str, count: int = 1) -> None:
        with self._lock:
            self._stats(queue, target).enqueued += count
        instruments = self._otel()
        if instruments is not None:
            instruments.enqueued.add(count, {"tasks.queue": queue, "tasks.target": target})
        self._maybe_flush()

    def ran(self, queue: str, target: str, outcome: str, seconds: float | None) -> None:
        """One task request ended with ``outcome`` (one of :data:`OUTCOMES`) after ``seconds``."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            stats = self._stats(queue, target)
            setattr(stats, outcome, getattr(stats, outcome) + 1)
            if seconds is not None and outcome != "skipped":
                stats.observe_duration(seconds)
        instruments = self._otel()
        if instruments is not None:
            attributes = {"tasks.queue": queue, "tasks.target": target}
            instruments.runs.add(1, {**attributes, "tasks.outcome": outcome})
            if seconds is not None and outcome != "skipped":
                instruments.duration.record(seconds, attributes)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush < self.flush_every or self._flushing:
            return
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
            self._last_flush = time.monotonic()
        self._submit(self._flush_in_background)

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        finally:
            self._flushing = False

    def take(self) -> StatsTable:
        """What was counted since the last flush (and forget it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def flush(self) -> None:
        """Add what was counted to this instance's buckets; on failure keep it for the next flush."""
        pending = self.take()
        if not pending:
            return
        now = clock.utc_now()
        try:
            metrics_store.add(pending, now, self.instance)
        except Exception:
            log.warning("could not store task metrics; keeping them for the next flush", exc_info=True)
            with self._lock:
                for name, stats in pending.items():
                    self._stats(*name).merge(stats)
            return
        if int(now.timestamp()) % 3600 < self.flush_every:  # about once an hour per instance
            try:
                metrics_store.expire(now)
            except Exception:
                log.warning("could not delete old task metrics", exc_info=True)


def outcome_name(outcome: Any) -> str:
    """Which of :data:`OUTCOMES` a pipeline outcome is."""
    if outcome.skipped is not None:
        return "skipped"
    if outcome.dead_letter is not None:
        return "dead_letters"
    if outcome.error is not None:
        return "retried"
    return "succeeded"
