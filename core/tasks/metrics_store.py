"""Task metrics kept in Datastore: per queue and target, counts and a duration histogram per time bucket.

Each app instance adds what it counted to its own bucket entities, one per minute (kept two hours)
and one per hour (kept two days), at most every few seconds and never per task, so a task costs no
Datastore operation for its metrics. Readers merge the buckets of every instance over a window.
Durations fall into fixed buckets; p50 and p95 are read from the merged histogram (the upper bound
of the bucket the percentile falls in), as Prometheus' ``histogram_quantile`` does.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from core import db

#: One kind per resolution, so a window is one single-property range query (no composite index).
KINDS = {"minute": "_tasks_metrics_minute", "hour": "_tasks_metrics_hour"}
#: Upper bounds of the duration buckets, in seconds; one more bucket holds everything longer.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: Bucket resolutions: name, length, how long buckets of it are kept.
RESOLUTIONS = {"minute": (datetime.timedelta(minutes=1), datetime.timedelta(hours=2)),
               "hour": (datetime.timedelta(hours=1), datetime.timedelta(days=2))}
COUNTS = ("enqueued", "succeeded", "retried", "dead_letters", "skipped")


@dataclasses.dataclass
class TargetStats:
    """What happened to one target's tasks in one queue: counts and run durations."""

    enqueued: int = 0
    succeeded: int = 0
    #: Failed runs the queue (or the app) will try again.
    retried: int = 0
    #: Failed runs that were given up (a dead letter).
    dead_letters: int = 0
    #: Requests answered without running (a lock held, the task ended or cancelled before).
    skipped: int = 0
    duration_sum: float = 0.0
    histogram: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(DURATION_BOUNDS) + 1))

    @property
    def runs(self) -> int:
        return self.succeeded + self.retried + self.dead_letters

    @property
    def failure_rate(self) -> float | None:
        return (self.retried + self.dead_letters) / self.runs if self.runs else None

    def observe_duration(self, seconds: float) -> None:
        self.duration_sum += seconds
        self.histogram[bisect.bisect_left(DURATION_BOUNDS, seconds)] += 1

    def percentile(self, fraction: float) -> float | None:
        """The upper bound of the duration bucket the ``fraction`` percentile falls in (``inf`` past the last)."""
        total = sum(self.histogram)
        if not total:
            return None
        rank, seen = fraction * total, 0
        for index, count in enumerate(self.histogram):
            seen += count
            if seen >= rank and count:
                return DURATION_BOUNDS[index] if index < len(DURATION_BOUNDS) else float("inf")
        return float("inf")

    def merge(self, other: TargetStats) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.duration_sum += other.duration_sum
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram)]

    def to_json(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in COUNTS}, "duration_sum": self.duration_sum,
                "histogram": self.histogram}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetStats:
        stats = cls(duration_sum=float(data.get("duration_sum", 0.0)))
        for name in COUNTS:
            setattr(stats, name, int(data.get(name, 0)))
        histogram = list(data.get("histogram") or [])
        if len(histogram) == len(stats.histogram):  # a histogram of other bounds is not merged
            stats.histogram = [int(count) for count in histogram]
        return stats


#: ``(queue, target)`` -> its stats.
StatsTable = dict[tuple[str, str], TargetStats]


def bucket_start(moment: datetime.datetime, resolution: str) -> datetime.datetime:
    length = RESOLUTIONS[resolution][0]
    epoch = datetime.datetime.fromtimestamp(0, datetime.UTC)
    return epoch + ((moment - epoch) // length) * length


def _key(resolution: str, start: datetime.datetime, instance: str) -> db.Key:
    return db.key(KINDS[resolution], f"{int(start.timestamp())}:{instance}")


def _decode(entity: db.Entity | None) -> StatsTable:
    if entity is None:
        return {}
    table: StatsTable = {}
    for row in json.loads(entity.get("stats") or "[]"):
        table[(row["queue"], row["target"])] = TargetStats.from_json(row)
    return table


def _encode(table: StatsTable) -> str:
    return json.dumps([{"queue": queue, "target": target, **stats.to_json()}
                       for (queue, target), stats in sorted(table.items())], separators=(",", ":"))


def add(pending: StatsTable, moment: datetime.datetime, instance: str) -> None:
    """Add ``pending`` to this instance's minute and hour buckets of ``moment``, in one transaction."""
    if not pending:
        return
    keys = [_key(resolution, bucket_start(moment, resolution), instance) for resolution in RESOLUTIONS]

    def write() -> None:
        entities = db.get(keys)
        updated = []
        for key, entity, resolution in zip(keys, entities, RESOLUTIONS):
            table = _decode(entity)
            for name, stats in pending.items():
                table.setdefault(name, TargetStats()).merge(stats)
            fresh = db.Entity(key, exclude_from_indexes=("stats",))
            fresh.update({"start": bucket_start(moment, resolution), "instance": instance, "stats": _encode(table)})
            updated.append(fresh)
        db.put(updated)

    db.run_in_transaction(write)


def window(resolution: str, since: datetime.datetime) -> list[tuple[datetime.datetime, StatsTable]]:
    """Every bucket of ``resolution`` from ``since`` on, each merged over the instances, oldest first."""
    merged: dict[datetime.datetime, StatsTable] = {}
    for entity in db.Query(KINDS[resolution]).filter("start", ">=", since).iter():
        table = merged.setdefault(entity["start"], {})
        for name, stats in _decode(entity).items():
            table.setdefault(name, TargetStats()).merge(stats)
    return sorted(merged.items())


def totals(buckets: Iterable[tuple[datetime.datetime, StatsTable]]) -> StatsTable:
    """The buckets of a window merged into one table."""
    total: StatsTable = {}
    for _, table in buckets:
        for name, stats in table.items():
            total.setdefault(name, TargetStats()).merge(stats)
    return total


def expire(now: datetime.datetime) -> int:
    """Delete the buckets older than their resolution keeps; how many."""
    deleted = 0
    for resolution, (_, keep) in RESOLUTIONS.items():
        query = db.Query(KINDS[resolution]).filter("start", "<", now - keep)
        keys = [entity.key for entity in query.keys_only().run(limit=500)]
        db.delete(keys)
        deleted += len(keys)
    return deleted
