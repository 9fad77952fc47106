"""App Engine's ``cron.yaml``: read its schedules, ping them locally, and write it from the code.

* :func:`parse_schedule` understands the App Engine schedule syntax the project uses:
  ``every 5 minutes``, ``every 2 hours synchronized``, ``every 10 minutes from 08:00 to 18:00``,
  ``every day 03:00``, ``every monday 09:00``, ``every mon,wed,fri 09:00`` and
  ``1,15 of month 00:00`` / ``1 of jan,jul 06:00``; anything else raises ``ValueError``.
* :class:`CronPinger` is the local development server's App Engine cron: a thread that sends a
  signed ``GET`` to every entry of ``cron.yaml`` on its schedule.
* :func:`plan_cron` / :func:`render_cron_yaml` derive the ``cron.yaml`` that covers every cron
  group the code declares, each pinged finely enough for its shortest interval or crontab, and
  :func:`coverage_problems` checks a written file against the code.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import logging
import math
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.tasks.auth.signing import sign_cron_ping
from core.tasks.periodic.schedule import (
    UTC,
    CalendarSchedule,
    Crontab,
    IntervalSchedule,
    Schedule,
    iter_fires,
    named_zone,
    next_fire,
    to_instant,
)

log = logging.getLogger(__name__)

CRON_PATH = "/_tasks/cron/"
#: How often a group whose tasks run "on every ping" is pinged when nothing asks for finer.
DEFAULT_PING_MINUTES = 5
#: Ping periods a generated cron.yaml uses: they divide a day, so synchronized pings line up.
NICE_PERIODS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440)

_WEEKDAYS = {name: index for index, names in enumerate((
    ("mon", "monday"), ("tue", "tues", "tuesday"), ("wed", "wednesday"), ("thu", "thur", "thurs", "thursday"),
    ("fri", "friday"), ("sat", "saturday"), ("sun", "sunday"))) for name in names}
_MONTHS = {name: index for index, names in enumerate((
    ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
    ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"),
    ("nov", "november"), ("dec", "december")), start=1) for name in names}
_WEEKDAY_OUT = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTH_OUT = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

_TIME = r"(?P<hour>[0-2]?\d):(?P<minute>[0-5]\d)"
_INTERVAL_RE = re.compile(r"^every (?P<n>\d+) (?P<unit>minutes?|mins?|hours?|hrs?)"
                          r"(?: (?P<sync>synchronized)| from (?P<start>\d\d?:\d\d) to (?P<end>\d\d?:\d\d))?$")
_EVERY_RE = re.compile(rf"^every (?P<days>[a-z,]+) {_TIME}$")
_OF_RE = re.compile(rf"^(?P<days>[0-9,]+) of (?P<months>[a-z,]+) {_TIME}$")


# --- schedules --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IntervalPing:
    """``every N minutes|hours`` with an optional ``synchronized`` or ``from HH:MM to HH:MM``."""

    every: datetime.timedelta
    synchronized: bool = False
    window: tuple[datetime.time, datetime.time] | None = None

    @property
    def aligned(self) -> bool:
        """Pings at fixed wall-clock times (from 00:00 or the window start) rather than from the last one."""
        return self.synchronized or self.window is not None


@dataclasses.dataclass(frozen=True)
class CalendarPing:
    """``every day 03:00``, ``every monday 09:00``, ``1 of month 00:00``: fixed calendar times."""

    schedule: CalendarSchedule


CronSchedule = IntervalPing | CalendarPing


def _clock(text: str, schedule: str) -> datetime.time:
    hour, _, minute = text.partition(":")
    if not (0 <= int(hour) <= 23 and 0 <= int(minute) <= 59):
        raise ValueError(f"bad time {text!r} in cron schedule {schedule!r}")
    return datetime.time(int(hour), int(minute))


def _names(text: str, table: dict[str, int], what: str, schedule: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({table[part] for part in text.split(",") if part}))
    except KeyError as exc:
        raise ValueError(f"unknown {what} {exc.args[0]!r} in cron schedule {schedule!r}") from None


def parse_schedule(text: str) -> CronSchedule:
    """Parse one App Engine cron schedule (the subset listed in this module's docstring)."""
    normal = " ".join(text.lower().split())
    match = _INTERVAL_RE.match(normal)
    if match:
        count = int(match["n"])
        if count <= 0:
            raise ValueError(f"cron schedule {text!r} needs a positive interval")
        unit = datetime.timedelta(hours=1) if match["unit"].startswith(("h", "hr")) else datetime.timedelta(minutes=1)
        window = None
        if match["start"]:
            window = (_clock(match["start"], text), _clock(match["end"], text))
        return IntervalPing(count * unit, synchronized=bool(match["sync"]), window=window)
    match = _EVERY_RE.match(normal)
    if match:
        at = _clock(f"{match['hour']}:{match['minute']}", text)
        weekdays = None if match["days"] == "day" else _names(match["days"], _WEEKDAYS, "weekday", text)
        return CalendarPing(CalendarSchedule(Crontab(weekday=weekdays, hour=at.hour, minute=at.minute)))
    match = _OF_RE.match(normal)
    if match:
        at = _clock(f"{match['hour']}:{match['minute']}", text)
        days = tuple(int(d) for d in match["days"].split(",") if d)
        months = None if match["months"] == "month" else _names(match["months"], _MONTHS, "month", text)
        return CalendarPing(CalendarSchedule(Crontab(month=months, day=days, hour=at.hour, minute=at.minute)))
    raise ValueError(f"unsupported cron schedule {text!r}: use 'every N minutes|hours [synchronized]', "
                     "'every N minutes from HH:MM to HH:MM', 'every day HH:MM', 'every monday[,friday] HH:MM' "
                     "or 'D[,D] of month|jan[,jul] HH:MM'")


def _aligned_pings(ping: IntervalPing, after: datetime.datetime, tz: datetime.tzinfo) -> Iterator[datetime.datetime]:
    """Wall-clock pings from 00:00 (synchronized) or the window start, day by day, after ``after``."""
    start_time, end_time = ping.window or (datetime.time(0, 0), None)
    day = after.astimezone(tz).date() - datetime.timedelta(days=1)
    last = after
    for _ in range(3 * 366):
        start = datetime.datetime.combine(day, start_time)
        if end_time is None:
            end = start + datetime.timedelta(days=1) - datetime.timedelta(microseconds=1)
        else:
            end = datetime.datetime.combine(day, end_time)
            if end < start:  # a window across midnight
                end += datetime.timedelta(days=1)
        skip = max(0, math.floor((after.astimezone(tz).replace(tzinfo=None) - start) / ping.every) - 1)
        wall = start + skip * ping.every
        while wall <= end:
            instant = to_instant(wall, tz)
            if instant > last:
                last = instant
                yield instant
            wall += ping.every
        day += datetime.timedelta(days=1)


def next_ping(schedule: CronSchedule, after: datetime.datetime, tz: datetime.tzinfo = UTC) -> datetime.datetime:
    """When App Engine cron would ping next after ``after`` (for plain intervals: ``after + every``)."""
    if isinstance(schedule, CalendarPing):
        return next_fire(schedule.schedule, after, tz)
    if not schedule.aligned:
        return after + schedule.every
    return next(_aligned_pings(schedule, after, tz))


def iter_pings(schedule: CronSchedule, start: datetime.datetime,
               tz: datetime.tzinfo = UTC) -> Iterator[datetime.datetime]:
    """The pings after ``start``; a plain interval counts from ``start`` itself."""
    if isinstance(schedule, CalendarPing):
        yield from iter_fires(schedule.schedule, start, tz)
    elif schedule.aligned:
        yield from _aligned_pings(schedule, start, tz)
    else:
        at = start
        while True:
            at += schedule.every
            yield at


# --- cron.yaml files -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CronEntry:
    """One ``cron:`` entry of a cron.yaml."""

    url: str
    schedule_text: str
    schedule: CronSchedule
    description: str = ""
    timezone: str = "UTC"
    target: str | None = None

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    @property
    def group(self) -> str | None:
        """The cron group an entry pings (``/_tasks/cron/<group>``), if it is one of ours."""
        path = self.path.rstrip("/")
        if path == CRON_PATH.rstrip("/"):
            return "default"
        return path[len(CRON_PATH):] if path.startswith(CRON_PATH) else None

    @property
    def zone(self) -> datetime.tzinfo:
        return named_zone(self.timezone)


def parse_cron_yaml(text: str) -> list[CronEntry]:
    """The entries of a cron.yaml document; a malformed one raises ``ValueError`` naming the entry."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("cron", []), list):
        raise ValueError("cron.yaml must be a mapping with a 'cron' list")
    entries = []
    for index, item in enumerate(data.get("cron") or []):
        if not isinstance(item, dict) or not item.get("url") or not item.get("schedule"):
            raise ValueError(f"cron.yaml entry {index + 1} needs a url and a schedule")
        url, text_schedule = str(item["url"]), str(item["schedule"])
        if not url.startswith("/"):
            raise ValueError(f"cron.yaml entry {index + 1}: url {url!r} must start with '/'")
        entries.append(CronEntry(url, text_schedule, parse_schedule(text_schedule), str(item.get("description") or ""),
                                 str(item.get("timezone") or "UTC"), item.get("target")))
    return entries


def load_cron_yaml(path: str | Path) -> list[CronEntry]:
    return parse_cron_yaml(Path(path).read_text(encoding="utf-8"))


# --- cron.yaml from the code ---------------------------------------------------------------------

def _nice_at_most(minutes: float) -> int:
    return max([p for p in NICE_PERIODS if p <= minutes] or [1])


def required_period(schedule: Schedule, zone_differs: bool = False) -> int | None:
    """Ping period (minutes, a divisor of a day) a schedule needs; ``None``: any will do."""
    if isinstance(schedule, IntervalSchedule):
        minutes = schedule.every.total_seconds() / 60
        return _nice_at_most(minutes) if minutes > 0 else None
    cron = schedule.crontab
    if schedule.second:
        return 1  # cron pings on whole minutes: the minute after the time is the first to see it due
    period = math.gcd(60, *(cron.minutes or (1,)))
    if period == 60:
        period = 60 * math.gcd(24, *(cron.hours or (1,)))
    if zone_differs:  # a zone of its own: its offset from the file's zone is a multiple of 15 minutes
        period = math.gcd(period, 15)
    return period


@dataclasses.dataclass(frozen=True)
class CronPlan:
    """The cron.yaml entry of one cron group."""

    group: str
    schedule: str
    timezone: str | None = None

    @property
    def url(self) -> str:
        return f"{CRON_PATH}{self.group}"


def _exact_calendar(schedules: Sequence[CalendarSchedule]) -> str | None:
    """``every day 03:00``-style text when every calendar task of a group shares one exact time."""
    crons = {(s.crontab, s.second) for s in schedules}
    if len(crons) != 1:
        return None
    cron, second = crons.pop()
    if second or cron.hours is None or cron.minutes is None or len(cron.hours) != 1 or len(cron.minutes) != 1:
        return None
    at = f"{cron.hours[0]:02d}:{cron.minutes[0]:02d}"
    if cron.days is None and cron.months is None:
        if cron.weekdays is None:
            return f"every day {at}"
        return f"every {','.join(_WEEKDAY_OUT[d] for d in cron.weekdays)} {at}"
    if cron.days is not None and cron.weekdays is None:
        months = "month" if cron.months is None else ",".join(_MONTH_OUT[m - 1] for m in cron.months)
        return f"{','.join(str(d) for d in cron.days)} of {months} {at}"
    return None


def plan_group(group: str, schedules: Sequence[Schedule], timezone: str = "UTC") -> CronPlan:
    """The ping schedule of one group: exact calendar times, or a period fine enough for all tasks.

    Calendar times are read in ``timezone`` (the app's), or in the zone every calendar task of the
    group carries itself.
    """
    calendars = [s for s in schedules if isinstance(s, CalendarSchedule)]
    own_zones = {getattr(s.tz, "key", None) for s in calendars}
    zone = timezone
    if len(own_zones) == 1 and None not in own_zones:
        zone = str(own_zones.pop())
    file_zone = named_zone(zone)

    def differs(schedule: Schedule) -> bool:
        return isinstance(schedule, CalendarSchedule) and str(schedule.zone(file_zone)) != str(file_zone)

    zone_out = zone if calendars and zone.upper() != "UTC" else None
    if calendars and len(calendars) == len(schedules) and not any(differs(s) for s in calendars):
        exact = _exact_calendar(calendars)
        if exact is not None:
            return CronPlan(group, exact, zone_out)
    periods = [p for p in (required_period(s, differs(s)) for s in schedules) if p is not None]
    period = math.gcd(*periods) if periods else DEFAULT_PING_MINUTES
    text = f"every {period // 60} hours" if period % 60 == 0 else f"every {period} minutes"
    if calendars:
        text += " synchronized"
    return CronPlan(group, text, zone_out)


def plan_cron(registry: Any, timezone: str = "UTC") -> list[CronPlan]:
    """One plan per cron group declared in ``registry`` (the built-in outbox sweep included)."""
    groups: dict[str, list[Schedule]] = {}
    for spec in registry.periodic.values():
        groups.setdefault(spec.cron_name, []).append(spec.schedule)
    return [plan_group(group, schedules, timezone) for group, schedules in sorted(groups.items())]


def render_cron_yaml(plans: Iterable[CronPlan]) -> str:
    """cron.yaml text for ``plans``: one entry per cron group (written by PyYAML, so any value is quoted right)."""
    entries = []
    for plan in plans:
        entry = {"description": f"periodic tasks of cron group {plan.group}", "url": plan.url,
                 "schedule": plan.schedule}
        if plan.timezone:
            entry["timezone"] = plan.timezone
        entries.append(entry)
    body = yaml.safe_dump({"cron": entries}, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=1_000_000)
    return _CRON_YAML_HEADER + body


_CRON_YAML_HEADER = ("# Cron groups of the periodic tasks; regenerate with `flask --app main tasks cron-yaml`.\n"
                     "# Each group is pinged finely enough for its shortest interval or crontab.\n")


#: How late after a calendar time its ping may come for :func:`coverage_problems`.
MAX_CALENDAR_DELAY = datetime.timedelta(minutes=15)


def coverage_problems(entries: Sequence[CronEntry], registry: Any, timezone: str = "UTC", *,
                      start: datetime.datetime | None = None, days: int = 35) -> list[str]:
    """What a cron.yaml misses for the groups declared in ``registry`` (empty when it covers all).

    A group must have an entry. Its pings, simulated over ``days``, must come at least once per
    interval of every interval task, and after each calendar time of a task before the next one
    and within :data:`MAX_CALENDAR_DELAY`.
    """
    start = start or datetime.datetime(2026, 1, 5, tzinfo=UTC)
    end = start + datetime.timedelta(days=days)
    by_group: dict[str, list[CronEntry]] = {}
    for entry in entries:
        if entry.group is not None:
            by_group.setdefault(entry.group, []).append(entry)
    problems = []
    specs_by_group: dict[str, list[Any]] = {}
    for spec in registry.periodic.values():
        specs_by_group.setdefault(spec.cron_name, []).append(spec)
    for group, specs in sorted(specs_by_group.items()):
        group_entries = by_group.get(group)
        if not group_entries:
            problems.append(f"cron group {group!r} has no entry (url {CRON_PATH}{group})")
            continue
        horizon = end + datetime.timedelta(days=1)
        pings = sorted({p for entry in group_entries
                        for p in _until(iter_pings(entry.schedule, start, entry.zone), horizon)})
        for spec in specs:
            problem = _spec_problem(spec, pings, start, end, named_zone(timezone))
            if problem:
                problems.append(f"cron group {group!r}: {spec.name} {problem}")
    return problems


def _until(pings: Iterator[datetime.datetime], end: datetime.datetime) -> Iterator[datetime.datetime]:
    for ping in pings:
        if ping > end:
            return
        yield ping


def _spec_problem(spec: Any, pings: Sequence[datetime.datetime], start: datetime.datetime,
                  end: datetime.datetime, tz: datetime.tzinfo) -> str | None:
    schedule = spec.schedule
    if isinstance(schedule, IntervalSchedule):
        if not schedule.every:
            return None if pings else "is never pinged"
        if not pings:
            return "is never pinged"
        worst = max(b - a for a, b in zip([start, *pings], pings))
        return None if worst <= schedule.every else (
            f"needs a ping at least every {schedule.every}, but pings are up to {worst} apart")
    fires = list(_until(iter_fires(schedule, start, tz), end))
    for fire, following in zip(fires, [*fires[1:], fires[-1] + MAX_CALENDAR_DELAY] if fires else []):
        index = bisect.bisect_left(pings, fire)
        limit = min(following, fire + MAX_CALENDAR_DELAY)
        if index >= len(pings) or pings[index] >= limit:
            return f"is due at {fire.isoformat()} but no ping comes from then until {limit.isoformat()}"
    return None


# --- the local development server's cron -------------------------------------------------------------

class CronPinger:
    """App Engine cron on one machine: signed ``GET`` pings of every cron.yaml entry, on a thread.

    ``CronPinger(base_url, secret, cron_yaml_path).start()``; ``stop()`` ends it. Calendar and
    aligned entries ping at their wall-clock times; a plain ``every N minutes`` entry pings
    ``initial_delay`` seconds after the start and then every N minutes (App Engine leaves the
    first time open; starting at once gives a developer feedback without waiting).
    """

    def __init__(self, base_url: str, secret: str, cron_yaml_path: str | Path, *, initial_delay: float = 2.0,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.path = Path(cron_yaml_path)
        self.initial_delay = initial_delay
        self.timeout = timeout
        #: ``(url, HTTP status or None)`` of the pings sent, newest last (bounded).
        self.sent: list[tuple[str, int | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CronPinger:
        if self._thread is not None:
            raise RuntimeError("the cron pinger is already running")
        entries = load_cron_yaml(self.path) if self.path.exists() else []
        if not entries:
            log.warning("no cron entries in %s: no cron pings", self.path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(entries,), name="cron-pinger", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _first(self, entry: CronEntry, now: datetime.datetime) -> datetime.datetime:
        schedule = entry.schedule
        if isinstance(schedule, IntervalPing) and not schedule.aligned:
            return now + datetime.timedelta(seconds=self.initial_delay)
        return next_ping(schedule, now, entry.zone)

    def _run(self, entries: list[CronEntry]) -> None:
        now = datetime.datetime.now(UTC)
        due = [self._first(entry, now) for entry in entries]
        while entries and not self._stop.is_set():
            index = min(range(len(entries)), key=due.__getitem__)
            wait = (due[index] - datetime.datetime.now(UTC)).total_seconds()
            if wait > 0:
                self._stop.wait(min(wait, 60.0))
                continue
            entry = entries[index]
            self.ping(entry)
            now = datetime.datetime.now(UTC)
            following = next_ping(entry.schedule, due[index], entry.zone)
            if following <= now:  # fell behind (a sleeping laptop): skip the missed pings, as cron does
                following = next_ping(entry.schedule, now, entry.zone)
            due[index] = following

    def ping(self, entry: CronEntry) -> int | None:
        """Send one signed ping now; returns the HTTP status (``None`` if the app did not answer)."""
        request = urllib.request.Request(self.base_url + entry.url, method="GET",
                                         headers={**sign_cron_ping(self.secret, entry.path),
                                                  "User-Agent": "local-cron"})
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            log.warning("cron ping %s failed: %s", entry.url, exc)
            status = None
        if status is not None and status >= 300:
            log.warning("cron ping %s answered %s", entry.url, status)
        self.sent.append((entry.url, status))
        del self.sent[:-1000]
        return status

