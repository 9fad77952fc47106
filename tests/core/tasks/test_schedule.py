"""Schedule evaluation with fixed clocks: intervals, daily times, crontabs, month ends and DST."""
from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tasks.errors import InvalidScheduleSpecification
from core.tasks.periodic.schedule import (
    CalendarSchedule,
    Crontab,
    IntervalSchedule,
    Month,
    Weekday,
    build_schedule,
    describe,
    due_slot,
    next_due,
    next_fire,
    previous_fire,
    to_instant,
)

UTC = datetime.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def berlin(*args: int, fold: int = 0) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


# --- building and validating -------------------------------------------------------------------------

def test_interval_is_minutes_or_a_timedelta():
    assert build_schedule(5) == IntervalSchedule(datetime.timedelta(minutes=5))
    assert build_schedule(0.5) == IntervalSchedule(datetime.timedelta(seconds=30))
    assert build_schedule(datetime.timedelta(hours=2)) == IntervalSchedule(datetime.timedelta(hours=2))
    assert build_schedule() == build_schedule(0) == IntervalSchedule(datetime.timedelta(0))


def test_at_and_crontab_become_calendar_schedules():
    daily = build_schedule(at=datetime.time(3, 0, 15))
    assert isinstance(daily, CalendarSchedule)
    assert daily.crontab.hours == (3,) and daily.crontab.minutes == (0,) and daily.second == 15
    assert daily.tz is None
    assert build_schedule(at=datetime.time(3, tzinfo=BERLIN)).tz is BERLIN
    weekly = build_schedule(crontab=Crontab(weekday=(Weekday.FRIDAY, Weekday.MONDAY), hour=9))
    assert weekly.crontab.weekdays == (0, 4) and weekly.crontab.minutes == (0,)


@pytest.mark.parametrize("kwargs, message", [
    ({"interval": 5, "at": datetime.time(3)}, "exactly one"),
    ({"interval": 0, "crontab": Crontab()}, "exactly one"),
    ({"at": datetime.time(3), "crontab": Crontab()}, "exactly one"),
    ({"interval": -1}, "negative"),
    ({"interval": datetime.timedelta(seconds=-1)}, "negative"),
    ({"interval": "5"}, "number of minutes"),
    ({"interval": True}, "number of minutes"),
    ({"interval": float("inf")}, "number of minutes"),
    ({"at": datetime.datetime(2026, 1, 1, 3)}, "datetime.time"),
    ({"at": "03:00"}, "datetime.time"),
    ({"crontab": "0 3 * * *"}, "Crontab"),
])
def test_bad_specifications_are_refused(kwargs, message):
    with pytest.raises(InvalidScheduleSpecification, match=message):
        build_schedule(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"minute": 60}, "out of range"),
    ({"hour": -1}, "out of range"),
    ({"day": 0}, "out of range"),
    ({"month": 13}, "out of range"),
    ({"weekday": 7}, "out of range"),
    ({"hour": ()}, "empty"),
    ({"minute": "5"}, "integers"),
    ({"minute": (1, 2.5)}, "integers"),
    ({"hour": True}, "integers"),
    ({"month": Month.FEBRUARY, "day": 30}, "never happens"),
    ({"month": (4, 6, 9, 11), "day": 31}, "never happens"),
])
def test_bad_crontabs_are_refused(kwargs, message):
    with pytest.raises(InvalidScheduleSpecification, match=message):
        Crontab(**kwargs)


def test_invalid_specification_is_a_value_error():
    assert issubclass(InvalidScheduleSpecification, ValueError)


def test_crontab_fields_accept_ints_tuples_lists_and_ranges():
    cron = Crontab(minute=range(0, 60, 15), hour=[12, 6, 6], month=Month.MARCH)
    assert cron.minutes == (0, 15, 30, 45) and cron.hours == (6, 12) and cron.months == (3,)
    assert Crontab(month=2, day=29).days == (29,)  # leap days exist


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        due_slot(build_schedule(5), None, datetime.datetime(2026, 1, 1))


# --- intervals ---------------------------------------------------------------------------------------

def test_interval_task_that_never_ran_is_due_at_once():
    now = utc(2026, 5, 1, 12)
    assert due_slot(build_schedule(60), None, now) == now


def test_interval_is_a_lower_bound_between_slots():
    schedule = build_schedule(60)
    last = utc(2026, 5, 1, 12)
    assert due_slot(schedule, last, last + datetime.timedelta(minutes=59)) is None
    assert due_slot(schedule, last, last + datetime.timedelta(minutes=60)) == last + datetime.timedelta(minutes=60)
    assert next_due(schedule, last, last) == last + datetime.timedelta(hours=1)


def test_a_ping_a_few_seconds_early_still_counts():
    schedule = build_schedule(60)
    last = utc(2026, 5, 1, 12)
    early = last + datetime.timedelta(minutes=59, seconds=45)
    assert due_slot(schedule, last, early) == early
    assert due_slot(schedule, last, last + datetime.timedelta(minutes=59)) is None
    one_minute = build_schedule(1)  # 5 % of a minute: 3 s
    assert due_slot(one_minute, last, last + datetime.timedelta(seconds=57)) is not None
    assert due_slot(one_minute, last, last + datetime.timedelta(seconds=56)) is None


def test_zero_interval_is_due_on_every_ping():
    schedule = build_schedule(0)
    last = utc(2026, 5, 1, 12)
    assert due_slot(schedule, last, last) == last
    assert due_slot(schedule, last, last + datetime.timedelta(seconds=1)) is not None


def test_missed_interval_runs_are_made_up_by_one_run():
    schedule = build_schedule(5)
    last = utc(2026, 5, 1, 12)
    now = last + datetime.timedelta(days=3)  # 864 intervals missed
    slot = due_slot(schedule, last, now)
    assert slot == now
    assert due_slot(schedule, slot, now + datetime.timedelta(minutes=1)) is None


def test_intervals_ignore_dst():
    schedule = build_schedule(datetime.timedelta(hours=1))
    last = berlin(2026, 3, 29, 1, 30)
    assert due_slot(schedule, last, berlin(2026, 3, 29, 3, 29), BERLIN) is None  # 59 real minutes later
    assert due_slot(schedule, last, berlin(2026, 3, 29, 3, 30), BERLIN) is not None


# --- daily times ---------------------------------------------------------------------------------------

def test_daily_time_is_due_once_it_passed():
    schedule = build_schedule(at=datetime.time(3, 0))
    seen = utc(2026, 5, 1, 14)  # first seen in the afternoon: nothing due until 03:00
    assert due_slot(schedule, seen, utc(2026, 5, 1, 23, 59)) is None
    assert due_slot(schedule, seen, utc(2026, 5, 2, 2, 59, 59)) is None
    assert due_slot(schedule, seen, utc(2026, 5, 2, 3, 0)) == utc(2026, 5, 2, 3)
    assert due_slot(schedule, seen, utc(2026, 5, 2, 3, 7)) == utc(2026, 5, 2, 3)
    assert due_slot(schedule, utc(2026, 5, 2, 3), utc(2026, 5, 2, 23)) is None
    assert next_due(schedule, utc(2026, 5, 2, 3), utc(2026, 5, 2, 9)) == utc(2026, 5, 3, 3)


def test_missed_days_run_once_for_the_latest_slot():
    schedule = build_schedule(at=datetime.time(3, 0))
    last = utc(2026, 5, 1, 3)
    now = utc(2026, 5, 5, 10)  # four slots passed while the app was down
    slot = due_slot(schedule, last, now)
    assert slot == utc(2026, 5, 5, 3)
    assert due_slot(schedule, slot, now) is None
    assert next_due(schedule, last, now) == slot  # overdue since the latest slot


def test_daily_time_in_the_app_time_zone_and_in_its_own():
    in_berlin = build_schedule(at=datetime.time(9, 0))
    assert next_fire(in_berlin, utc(2026, 1, 10), BERLIN) == utc(2026, 1, 10, 8)   # CET
    assert next_fire(in_berlin, utc(2026, 7, 10), BERLIN) == utc(2026, 7, 10, 7)   # CEST
    own_zone = build_schedule(at=datetime.time(9, 0, tzinfo=ZoneInfo("America/New_York")))
    assert next_fire(own_zone, utc(2026, 1, 10), BERLIN) == utc(2026, 1, 10, 14)   # its zone wins


# --- crontabs, month ends ----------------------------------------------------------------------------

def test_weekly_crontab():
    schedule = build_schedule(crontab=Crontab(weekday=(Weekday.MONDAY, Weekday.WEDNESDAY), hour=9))
    assert next_fire(schedule, utc(2026, 5, 6, 9)) == utc(2026, 5, 11, 9)          # Wed 09:00 → Mon
    assert next_fire(schedule, utc(2026, 5, 6, 8, 59)) == utc(2026, 5, 6, 9)
    assert previous_fire(schedule, utc(2026, 5, 10, 12)) == utc(2026, 5, 6, 9)


def test_day_31_skips_shorter_months():
    schedule = build_schedule(crontab=Crontab(day=31))
    fires = [utc(2026, 1, 1)]
    for _ in range(7):
        fires.append(next_fire(schedule, fires[-1]))
    assert [f.date() for f in fires[1:]] == [datetime.date(2026, m, 31) for m in (1, 3, 5, 7, 8, 10, 12)]


def test_last_days_of_february_and_leap_years():
    feb_end = build_schedule(crontab=Crontab(month=2, day=(28, 29)))
    assert next_fire(feb_end, utc(2026, 2, 28)) == utc(2027, 2, 28)
    assert next_fire(feb_end, utc(2028, 2, 28)) == utc(2028, 2, 29)
    leap_day = build_schedule(crontab=Crontab(month=2, day=29))
    assert next_fire(leap_day, utc(2025, 3, 1)) == utc(2028, 2, 29)
    assert next_fire(leap_day, utc(2096, 3, 1)) == utc(2104, 2, 29)   # 2100 is not a leap year
    assert previous_fire(leap_day, utc(2027, 12, 31)) == utc(2024, 2, 29)


def test_first_of_the_month_across_a_year_end():
    schedule = build_schedule(crontab=Crontab(day=1, hour=(0, 12)))
    assert next_fire(schedule, utc(2026, 12, 31, 23)) == utc(2027, 1, 1, 0)
    assert previous_fire(schedule, utc(2027, 1, 1, 0)) == utc(2027, 1, 1, 0)
    assert previous_fire(schedule, utc(2026, 12, 31, 23)) == utc(2026, 12, 1, 12)


def test_day_and_weekday_must_both_match():
    friday_13th = build_schedule(crontab=Crontab(day=13, weekday=Weekday.FRIDAY, hour=None, minute=0))
    assert next_fire(friday_13th, utc(2026, 1, 1)) == utc(2026, 2, 13, 0)
    assert next_fire(friday_13th, utc(2026, 2, 13, 23)) == utc(2026, 3, 13, 0)


def test_every_minute_and_every_quarter_hour():
    every_minute = build_schedule(crontab=Crontab(hour=None, minute=None))
    assert next_fire(every_minute, utc(2026, 5, 1, 12, 0, 30)) == utc(2026, 5, 1, 12, 1)
    quarter = build_schedule(crontab=Crontab(hour=None, minute=(0, 15, 30, 45)))
    assert next_fire(quarter, utc(2026, 5, 1, 23, 50)) == utc(2026, 5, 2, 0, 0)
    assert due_slot(quarter, utc(2026, 5, 1, 12, 15), utc(2026, 5, 1, 12, 44)) == utc(2026, 5, 1, 12, 30)


# --- daylight saving time ----------------------------------------------------------------------------

SPRING = datetime.date(2026, 3, 29)   # Europe/Berlin: 02:00 CET → 03:00 CEST
AUTUMN = datetime.date(2026, 10, 25)  # Europe/Berlin: 03:00 CEST → 02:00 CET


def test_to_instant_on_both_dst_days():
    assert to_instant(datetime.datetime(2026, 3, 29, 1, 59), BERLIN) == utc(2026, 3, 29, 0, 59)
    assert to_instant(datetime.datetime(2026, 3, 29, 2, 0), BERLIN) == utc(2026, 3, 29, 1, 0)    # skipped
    assert to_instant(datetime.datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1, 0)   # skipped
    assert to_instant(datetime.datetime(2026, 3, 29, 3, 0), BERLIN) == utc(2026, 3, 29, 1, 0)
    assert to_instant(datetime.datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)  # first of two
    assert to_instant(datetime.datetime(2026, 10, 25, 3, 0), BERLIN) == utc(2026, 10, 25, 2, 0)


def test_spring_forward_a_skipped_daily_time_fires_when_the_clocks_jump():
    schedule = build_schedule(at=datetime.time(2, 30))
    before = berlin(2026, 3, 28, 2, 30)
    fire = next_fire(schedule, before, BERLIN)
    assert fire == berlin(2026, 3, 29, 3, 0) == utc(2026, 3, 29, 1, 0)
    assert due_slot(schedule, before, utc(2026, 3, 29, 0, 59), BERLIN) is None
    assert due_slot(schedule, before, utc(2026, 3, 29, 1, 0), BERLIN) == fire
    assert due_slot(schedule, fire, berlin(2026, 3, 29, 23, 0), BERLIN) is None   # once that day
    assert next_fire(schedule, fire, BERLIN) == berlin(2026, 3, 30, 2, 30)         # back to normal


def test_spring_forward_daily_time_after_the_gap_keeps_its_wall_clock_time():
    schedule = build_schedule(at=datetime.time(9, 0))
    assert next_fire(schedule, berlin(2026, 3, 28, 9, 0), BERLIN) == utc(2026, 3, 29, 7, 0)  # 09:00 CEST
    assert next_fire(schedule, berlin(2026, 3, 27, 9, 0), BERLIN) == utc(2026, 3, 28, 8, 0)  # 09:00 CET


def test_spring_forward_half_hourly_crontab_collapses_the_skipped_hour_into_one_run():
    schedule = build_schedule(crontab=Crontab(hour=None, minute=(0, 30)))
    fires, at = [], berlin(2026, 3, 29, 1, 0)
    for _ in range(4):
        at = next_fire(schedule, at, BERLIN)
        fires.append(at.astimezone(BERLIN).strftime("%H:%M %Z"))
    assert fires == ["01:30 CET", "03:00 CEST", "03:30 CEST", "04:00 CEST"]


def test_fall_back_a_repeated_daily_time_fires_once():
    schedule = build_schedule(at=datetime.time(2, 30))
    first = berlin(2026, 10, 25, 2, 30, fold=0)
    second = berlin(2026, 10, 25, 2, 30, fold=1)
    assert second - first == datetime.timedelta(hours=1)
    assert next_fire(schedule, berlin(2026, 10, 24, 2, 30), BERLIN) == first
    assert due_slot(schedule, first, second, BERLIN) is None
    assert due_slot(schedule, first, second + datetime.timedelta(minutes=5), BERLIN) is None
    assert next_fire(schedule, first, BERLIN) == berlin(2026, 10, 26, 2, 30)


def test_fall_back_daily_time_after_the_change_uses_the_new_offset():
    schedule = build_schedule(at=datetime.time(9, 0))
    assert next_fire(schedule, berlin(2026, 10, 24, 9, 0), BERLIN) == utc(2026, 10, 25, 8, 0)  # 09:00 CET
    assert previous_fire(schedule, utc(2026, 10, 25, 7, 59), BERLIN) == utc(2026, 10, 24, 7, 0)


def test_fall_back_missed_runs_across_the_change_run_once():
    schedule = build_schedule(at=datetime.time(3, 0))
    last = berlin(2026, 10, 20, 3, 0)
    now = berlin(2026, 10, 27, 12, 0)
    assert due_slot(schedule, last, now, BERLIN) == berlin(2026, 10, 27, 3, 0)


# --- next_due and descriptions -------------------------------------------------------------------------

def test_next_due():
    now = utc(2026, 5, 1, 12)
    assert next_due(build_schedule(10), None, now) == now
    assert next_due(build_schedule(10), now, now) == now + datetime.timedelta(minutes=10)
    assert next_due(build_schedule(crontab=Crontab(hour=None, minute=0)), now, now) == utc(2026, 5, 1, 13)


def test_descriptions():
    assert describe(build_schedule(0)) == "every cron ping"
    assert describe(build_schedule(90)) == "at most every 1 h 30 min"
    assert describe(build_schedule(datetime.timedelta(days=1, seconds=5))) == "at most every 1 d 5 s"
    assert describe(build_schedule(at=datetime.time(3, 0)), BERLIN) == "daily at 03:00 (Europe/Berlin)"
    assert describe(build_schedule(crontab=Crontab(weekday=(0, 4), hour=9, minute=(0, 30)))) == \
        "crontab 0,30 9 * * mon,fri"
    assert describe(build_schedule(crontab=Crontab(month=(1, 7), day=1))) == "crontab 0 0 1 jan,jul *"


# --- against a brute-force scan ------------------------------------------------------------------------

def _matches(cron: Crontab, wall: datetime.datetime) -> bool:
    checks = ((cron.months, wall.month), (cron.days, wall.day), (cron.weekdays, wall.weekday()),
              (cron.hours, wall.hour), (cron.minutes, wall.minute))
    return all(values is None or value in values for values, value in checks)


def _brute_next(cron: Crontab, after: datetime.datetime, zone: datetime.tzinfo) -> datetime.datetime:
    minute = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    for _ in range(60 * 24 * 400):
        if _matches(cron, minute.astimezone(zone)):
            return minute
        minute += datetime.timedelta(minutes=1)
    raise AssertionError("no match within 400 days")


crontabs = st.builds(
    Crontab,
    month=st.one_of(st.none(), st.sets(st.integers(1, 12), min_size=1, max_size=4).map(tuple)),
    day=st.one_of(st.none(), st.sets(st.integers(1, 28), min_size=1, max_size=4).map(tuple)),
    weekday=st.one_of(st.none(), st.sets(st.integers(0, 6), min_size=1, max_size=3).map(tuple)),
    hour=st.one_of(st.none(), st.sets(st.integers(0, 23), min_size=1, max_size=3).map(tuple)),
    minute=st.one_of(st.none(), st.sets(st.integers(0, 59), min_size=1, max_size=3).map(tuple)),
)


@settings(max_examples=60, deadline=None)
@given(cron=crontabs,
       after=st.datetimes(datetime.datetime(2024, 1, 1), datetime.datetime(2030, 1, 1)),
       zone=st.sampled_from([UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30))]))
def test_next_and_previous_fire_agree_with_a_minute_by_minute_scan(cron, after, zone):
    schedule = CalendarSchedule(cron)
    after = after.replace(tzinfo=UTC)
    expected = _brute_next(cron, after, zone) if cron.months is None else None
    fire = next_fire(schedule, after, zone)
    if expected is not None:
        assert fire == expected
    assert fire > after and _matches(cron, fire.astimezone(zone))
    assert previous_fire(schedule, fire, zone) == fire
    assert previous_fire(schedule, fire - datetime.timedelta(seconds=1), zone) <= after
