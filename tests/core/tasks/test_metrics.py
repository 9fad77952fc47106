"""Task metrics: counted per queue and target from every run, kept in Datastore buckets without a
Datastore operation per task, and exported through OpenTelemetry's metrics API."""
from __future__ import annotations

import datetime

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from core.tasks import PermanentTaskFailure, callDeferred, metrics_store
from core.tasks.metrics_store import TargetStats
from core.tasks.runtime import get_runtime

FAILURES = {"left": 0}


@callDeferred
def quick(n: int) -> int:
    return n


@callDeferred
def flaky() -> None:
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise OSError("partner down")


@callDeferred
def doomed() -> None:
    raise PermanentTaskFailure("never works")


def test_percentiles_come_from_the_histogram() -> None:
    stats = TargetStats()
    for seconds in [0.003] * 50 + [0.2] * 45 + [4.0] * 5:
        stats.observe_duration(seconds)
    assert stats.percentile(0.5) == 0.005
    assert stats.percentile(0.95) == 0.25
    assert stats.percentile(0.99) == 5.0
    assert TargetStats().percentile(0.5) is None


def test_runs_are_counted_per_target_and_stored_merged_over_instances(app, task_queue) -> None:
    runtime = get_runtime()
    for n in range(5):
        quick(n)
    FAILURES["left"] = 2
    flaky()
    doomed()
    task_queue.run_pending(raise_errors=False)
    task_queue.advance(60, raise_errors=False)     # the flaky one's retries come back after the backoff
    runtime.metrics.flush()
    # A second instance adds to its own bucket; readers merge both.
    other = TargetStats(succeeded=3)
    for _ in range(3):
        other.observe_duration(0.01)
    metrics_store.add({("default", f"{__name__}.quick"): other}, datetime.datetime.now(datetime.UTC), "other")

    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    table = metrics_store.totals(metrics_store.window("minute", since))
    quick_stats = table[("default", f"{__name__}.quick")]
    assert (quick_stats.succeeded, quick_stats.retried, quick_stats.runs) == (8, 0, 8)
    assert sum(quick_stats.histogram) == 8 and quick_stats.percentile(0.95) is not None
    flaky_stats = table[("default", f"{__name__}.flaky")]
    assert (flaky_stats.succeeded, flaky_stats.retried) == (1, 2) and flaky_stats.failure_rate == pytest.approx(2 / 3)
    assert table[("default", f"{__name__}.doomed")].dead_letters == 1
    hourly = metrics_store.totals(metrics_store.window("hour", since - datetime.timedelta(hours=1)))
    assert hourly[("default", f"{__name__}.quick")].succeeded == 8


def test_counting_costs_no_datastore_operation_per_task(app, task_queue) -> None:
    runtime = get_runtime()
    runtime.metrics.flush_every = 3600.0
    for n in range(20):
        quick(n)
    task_queue.run_pending()
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    assert metrics_store.window("minute", since) == []      # nothing written per task
    pending = runtime.metrics.take()
    assert pending[("default", f"{__name__}.quick")].succeeded == 20
    assert pending[("default", f"{__name__}.quick")].enqueued == 20


def test_opentelemetry_receives_counts_and_durations(app, task_queue) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    runtime = get_runtime()
    runtime.metrics.use_meter_provider(provider)
    for n in range(3):
        quick(n)
    doomed()
    task_queue.run_pending(raise_errors=False)
    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    runs = {(p.attributes["tasks.target"].rsplit(".", 1)[-1], p.attributes["tasks.outcome"]): p.value
            for p in points["tasks.runs"]}
    enqueued = {p.attributes["tasks.target"].rsplit(".", 1)[-1]: p.value for p in points["tasks.enqueued"]}
    assert enqueued["quick"] == 3 and enqueued["doomed"] == 1
    assert runs[("quick", "succeeded")] == 3 and runs[("doomed", "dead_letters")] == 1
    [quick_duration] = [p for p in points["tasks.run.duration"] if p.attributes["tasks.target"].endswith("quick")]
    assert quick_duration.count == 3 and quick_duration.attributes["tasks.queue"] == "default"
