"""The last hour of task outcomes, per minute, as a server-rendered SVG (no script, no fetches).

Counts come from what is stored anyway: task records (``updated_at`` in the hour, then bucketed by
``ended_at``) and dead letters (``created``). Untracked tasks cost nothing extra: they appear only
when they fail, through their dead letter.

- **succeeded**: records that ended ``succeeded`` in that minute;
- **failed**: records that ended ``failed``, plus dead letters of tasks without such a record;
- **retried**: tasks that needed more than one attempt, in the minute of their last change
  (a task retrying now, or one that ended after retries).
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from markupsafe import Markup, escape

from core import db
from core.admin.records import moment, text
from core.clock import utc_now
from core.tasks.deadletters import DEAD_LETTER_KIND
from core.tasks.records import FAILED, RECORD_KIND, RETRYING, SUCCEEDED, InvalidRecord, TaskRecord

MINUTES = 60
#: Entities read per kind at most; past that the chart says its counts are partial.
MAX_SCANNED = 20_000
SERIES = (("succeeded", "#18794e"), ("failed", "#d92d20"), ("retried", "#f79009"))
_SLOT, _BAR, _HEIGHT, _BOTTOM = 10, 3, 110, 18


@dataclasses.dataclass
class Minute:
    start: datetime.datetime
    succeeded: int = 0
    failed: int = 0
    retried: int = 0


@dataclasses.dataclass
class Activity:
    minutes: list[Minute]
    partial: bool

    def total(self, series: str) -> int:
        return sum(getattr(m, series) for m in self.minutes)

    def as_json(self) -> dict[str, Any]:
        return {"minutes": [dataclasses.asdict(m) for m in self.minutes], "partial": self.partial,
                "totals": {name: self.total(name) for name, _ in SERIES}}


def last_hour(now: datetime.datetime | None = None) -> Activity:
    """Per-minute counts of the hour up to ``now`` (the last bucket is the current minute)."""
    now = now or utc_now()
    first = now.replace(second=0, microsecond=0) - datetime.timedelta(minutes=MINUTES - 1)
    minutes = [Minute(first + datetime.timedelta(minutes=i)) for i in range(MINUTES)]

    def bucket(when: datetime.datetime | None) -> Minute | None:
        if when is None or when < first or when > now:
            return None
        return minutes[min(MINUTES - 1, int((when - first).total_seconds() // 60))]

    entities, partial = _scan(db.Query(RECORD_KIND).filter("updated_at", ">=", first))
    failed_ids: set[str] = set()
    for entity in entities:
        try:
            record = TaskRecord.from_entity(entity)
        except InvalidRecord:
            continue  # a record no version of the code writes: nothing to count
        if record.state in (SUCCEEDED, FAILED) and (slot := bucket(record.ended_at)) is not None:
            if record.state is SUCCEEDED:
                slot.succeeded += 1
            else:
                slot.failed += 1
                failed_ids.add(text(record.id, 500))
        if record.attempts > 1 or record.state is RETRYING:
            slot = bucket(record.ended_at if record.finished else record.updated_at)
            if slot is not None:
                slot.retried += 1
    letters, letters_partial = _scan(db.Query(DEAD_LETTER_KIND).filter("created", ">=", first))
    for letter in letters:
        if text(letter.get("task_id"), 500) in failed_ids:
            continue
        if (slot := bucket(moment(letter.get("created")))) is not None:
            slot.failed += 1
    return Activity(minutes, partial or letters_partial)


def _scan(query: db.Query) -> tuple[list[db.Entity], bool]:
    found = list(query.limit(MAX_SCANNED + 1).iter())
    return found[:MAX_SCANNED], len(found) > MAX_SCANNED


def render_svg(activity: Activity) -> Markup:
    """Grouped bars per minute in an SVG, its scale and minute labels (every 10 minutes) as HTML text.

    The SVG stretches to the page's width; labels outside it keep their size (at least 12 px) at
    any width, where text inside a scaled SVG would shrink with it.
    """
    peak = max([1] + [max(m.succeeded, m.failed, m.retried) for m in activity.minutes])
    width = MINUTES * _SLOT
    plot = _HEIGHT - _BOTTOM
    parts = ['<div class="chart"><div class="chart-scale" aria-hidden="true">'
             f'<span class="peak">{peak}</span><span>0</span></div><div class="chart-plot">',
             f'<svg xmlns="http://www.w3.org/2000/svg" id="activity-chart" viewBox="0 0 {width} {plot}" '
             f'preserveAspectRatio="none" width="100%" height="{plot}" role="img" '
             f'aria-label="Tasks per minute over the last hour">',
             f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" stroke="#d0d5dd"/>']
    labels = []
    for i, minute in enumerate(activity.minutes):
        x = i * _SLOT
        label = minute.start.strftime("%H:%M")
        counts = {name: getattr(minute, name) for name, _ in SERIES}
        parts.append(f'<g class="minute" data-minute="{label}" '
                     + " ".join(f'data-{name}="{count}"' for name, count in counts.items()) + ">")
        parts.append(f"<title>{escape(label)}: " + ", ".join(f"{n} {name}" for name, n in counts.items())
                     + "</title>")
        for j, (name, color) in enumerate(SERIES):
            height = round(counts[name] / peak * (plot - 8), 1)
            if height:
                parts.append(f'<rect class="{name}" x="{x + j * _BAR}" y="{plot - height}" width="{_BAR}" '
                             f'height="{height}" fill="{color}"/>')
        parts.append("</g>")
        if i % 10 == 0:
            labels.append(f"<span>{escape(label)}</span>")
    parts.append('</svg><div class="chart-times" aria-hidden="true">' + "".join(labels) + "</div></div></div>")
    return Markup("".join(parts))
