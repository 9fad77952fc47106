"""The app's clock: each app context reads its own app's, the wall clock outside any app."""
from __future__ import annotations

import datetime
import threading

import pytest

from core.clock import WALL_CLOCK, current_clock, utc_now
from core.testing import TaskQueue, TestClock

MAY = datetime.datetime(2026, 5, 4, 14, 0, tzinfo=datetime.UTC)
JUNE = datetime.datetime(2026, 6, 1, 9, 30, tzinfo=datetime.UTC)


def test_each_app_reads_its_own_clock_and_a_replaced_clock_is_seen_where_the_app_is_bound(make_app):
    may, june = make_app(), make_app()  # the test's own calls now run bound to ``june``
    TaskQueue(may, clock=TestClock(start=MAY))
    TaskQueue(june, clock=TestClock(start=JUNE))
    assert utc_now() == JUNE, "the clock installed after the app was bound is the one read"
    with may.app_context():
        assert utc_now() == MAY
    with june.app_context():
        june_queue = TaskQueue(june)
        june_queue.advance(90)
        assert utc_now() == JUNE + datetime.timedelta(seconds=90) == june_queue.clock.now()


def test_outside_any_app_the_clock_is_the_wall_clock(make_app):
    TaskQueue(make_app(), clock=TestClock(start=MAY))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(current_clock()))  # a fresh context: no app bound
    thread.start()
    thread.join()
    assert seen == [WALL_CLOCK] and utc_now() == MAY


def test_the_test_clock_never_goes_backwards():
    clock = TestClock(start=MAY)
    assert clock.advance_to(MAY - datetime.timedelta(hours=1)) == MAY
    assert clock.advance(60) == MAY + datetime.timedelta(minutes=1)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
