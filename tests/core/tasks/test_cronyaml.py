"""cron.yaml: App Engine schedules, ping times, the file generated from the code, the local pinger."""
from __future__ import annotations

import datetime
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tasks.auth.signing import CRON_MAX_AGE, SIGNATURE_HEADER, verify_signature
from core.tasks.periodic.cronyaml import (
    CalendarPing,
    CronPinger,
    IntervalPing,
    coverage_problems,
    next_ping,
    parse_cron_yaml,
    parse_schedule,
    plan_cron,
    plan_group,
    render_cron_yaml,
)
from core.tasks.periodic.declare import PeriodicSpec
from core.tasks.periodic.schedule import Crontab, build_schedule
from core.tasks.registry import TaskRegistry

UTC = datetime.UTC
BERLIN = ZoneInfo("Europe/Berlin")
REPO = Path(__file__).resolve().parents[3]


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


# --- App Engine schedule syntax ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("every 5 minutes", IntervalPing(datetime.timedelta(minutes=5))),
    ("every 1 mins", IntervalPing(datetime.timedelta(minutes=1))),
    ("every 24 hours", IntervalPing(datetime.timedelta(hours=24))),
    ("every 2 hrs synchronized", IntervalPing(datetime.timedelta(hours=2), synchronized=True)),
    ("every 10 minutes from 08:00 to 18:00",
     IntervalPing(datetime.timedelta(minutes=10), window=(datetime.time(8), datetime.time(18)))),
    ("  Every   5   Minutes ", IntervalPing(datetime.timedelta(minutes=5))),
])
def test_interval_schedules(text, expected):
    assert parse_schedule(text) == expected


@pytest.mark.parametrize("text, cron", [
    ("every day 03:00", Crontab(hour=3)),
    ("every monday 09:00", Crontab(weekday=0, hour=9)),
    ("every mon,wed,friday 09:30", Crontab(weekday=(0, 2, 4), hour=9, minute=30)),
    ("1,15 of month 00:00", Crontab(day=(1, 15))),
    ("1 of jan,april,july,oct 06:00", Crontab(month=(1, 4, 7, 10), day=1, hour=6)),
])
def test_calendar_schedules(text, cron):
    parsed = parse_schedule(text)
    assert isinstance(parsed, CalendarPing) and parsed.schedule.crontab == cron


@pytest.mark.parametrize("text", ["every 0 minutes", "every day 25:00", "every funday 09:00", "hourly",
                                  "1st monday of sep 17:00", "every 5 fortnights", "13 of smarch 00:00"])
def test_unsupported_or_bad_schedules_are_refused(text):
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_next_ping():
    assert next_ping(parse_schedule("every 5 minutes"), utc(2026, 5, 1, 12, 1)) == utc(2026, 5, 1, 12, 6)
    synchronized = parse_schedule("every 2 hours synchronized")
    assert next_ping(synchronized, utc(2026, 5, 1, 3, 10)) == utc(2026, 5, 1, 4)
    assert next_ping(synchronized, utc(2026, 5, 1, 22, 0)) == utc(2026, 5, 2, 0)
    window = parse_schedule("every 10 minutes from 08:00 to 18:00")
    assert next_ping(window, utc(2026, 5, 1, 7, 0)) == utc(2026, 5, 1, 8, 0)
    assert next_ping(window, utc(2026, 5, 1, 17, 55)) == utc(2026, 5, 1, 18, 0)
    assert next_ping(window, utc(2026, 5, 1, 18, 0)) == utc(2026, 5, 2, 8, 0)
    night = parse_schedule("every 60 minutes from 22:00 to 02:00")
    assert next_ping(night, utc(2026, 5, 1, 23, 30)) == utc(2026, 5, 2, 0, 0)
    assert next_ping(night, utc(2026, 5, 2, 2, 0)) == utc(2026, 5, 2, 22, 0)
    assert next_ping(parse_schedule("every monday 09:00"), utc(2026, 5, 6), BERLIN) == utc(2026, 5, 11, 7)
    assert next_ping(parse_schedule("every day 02:30"), utc(2026, 3, 28, 12), BERLIN) == utc(2026, 3, 29, 1)


def test_parse_cron_yaml():
    entries = parse_cron_yaml("""
cron:
- description: main group
  url: /_tasks/cron/default
  schedule: every 5 minutes
- url: /_tasks/cron/nightly?source=cron
  schedule: every day 03:00
  timezone: Europe/Berlin
  target: worker
- url: /other/job
  schedule: every 24 hours
""")
    assert [e.group for e in entries] == ["default", "nightly", None]
    assert entries[1].path == "/_tasks/cron/nightly" and entries[1].zone == BERLIN and entries[1].target == "worker"
    assert parse_cron_yaml("cron: []") == [] and parse_cron_yaml("") == []
    for bad in ("cron: {}", "cron:\n- url: /x\n", "cron:\n- url: x\n  schedule: every 5 minutes\n", "- 1"):
        with pytest.raises(ValueError):
            parse_cron_yaml(bad)


# --- cron.yaml from the code ------------------------------------------------------------------------

@pytest.mark.parametrize("schedules, timezone, expected", [
    ([build_schedule(0)], "UTC", ("every 5 minutes", None)),
    ([build_schedule(5), build_schedule(0)], "UTC", ("every 5 minutes", None)),
    ([build_schedule(7)], "UTC", ("every 6 minutes", None)),
    ([build_schedule(datetime.timedelta(hours=3))], "UTC", ("every 3 hours", None)),
    ([build_schedule(datetime.timedelta(seconds=20))], "UTC", ("every 1 minutes", None)),
    ([build_schedule(at=datetime.time(3))], "Europe/Berlin", ("every day 03:00", "Europe/Berlin")),
    ([build_schedule(at=datetime.time(3)), build_schedule(crontab=Crontab(hour=3))], "UTC",
     ("every day 03:00", None)),
    ([build_schedule(at=datetime.time(3, tzinfo=BERLIN))], "UTC", ("every day 03:00", "Europe/Berlin")),
    ([build_schedule(crontab=Crontab(weekday=(0, 4), hour=9))], "UTC", ("every mon,fri 09:00", None)),
    ([build_schedule(crontab=Crontab(month=(1, 7), day=1, hour=6))], "UTC", ("1 of jan,jul 06:00", None)),
    ([build_schedule(at=datetime.time(3)), build_schedule(at=datetime.time(4))], "UTC",
     ("every 1 hours synchronized", None)),
    ([build_schedule(at=datetime.time(3)), build_schedule(90)], "Europe/Berlin",
     ("every 1 hours synchronized", "Europe/Berlin")),
    ([build_schedule(crontab=Crontab(hour=None, minute=(15, 45)))], "UTC", ("every 15 minutes synchronized", None)),
    ([build_schedule(at=datetime.time(3, 0, 30))], "UTC", ("every 1 minutes synchronized", None)),
    ([build_schedule(at=datetime.time(3, tzinfo=ZoneInfo("Asia/Kolkata"))), build_schedule(at=datetime.time(3))],
     "UTC", ("every 15 minutes synchronized", None)),
])
def test_plan_group(schedules, timezone, expected):
    plan = plan_group("g", schedules, timezone)
    assert (plan.schedule, plan.timezone) == expected
    assert plan.url == "/_tasks/cron/g"


def registry_of(*groups: tuple[str, object]) -> TaskRegistry:
    registry = TaskRegistry()
    for index, (group, schedule) in enumerate(groups):
        registry.periodic.add(f"tests.task{index}", PeriodicSpec(f"tests.task{index}", lambda: None, schedule, group,
                                                                 False, f"task{index}"))
    return registry


def test_rendered_cron_yaml_covers_every_group_and_a_lacking_one_does_not():
    registry = registry_of(("default", build_schedule(10)), ("reports", build_schedule(at=datetime.time(6, 30))),
                           ("fast", build_schedule(crontab=Crontab(hour=None, minute=None))))
    text = render_cron_yaml(plan_cron(registry, "Europe/Berlin"))
    data = yaml.safe_load(text)
    assert [e["url"] for e in data["cron"]] == ["/_tasks/cron/default", "/_tasks/cron/fast", "/_tasks/cron/reports"]
    entries = parse_cron_yaml(text)
    assert coverage_problems(entries, registry, "Europe/Berlin", days=9) == []
    problems = coverage_problems([e for e in entries if e.group != "reports"], registry, "Europe/Berlin", days=9)
    assert len(problems) == 1 and "'reports' has no entry" in problems[0]


def problems_of_g(cron_yaml: str, registry: TaskRegistry, timezone: str = "UTC") -> list[str]:
    return [p for p in coverage_problems(parse_cron_yaml(cron_yaml), registry, timezone) if "'g'" in p]


def test_coverage_finds_pings_that_are_too_coarse_or_late():
    every_five = registry_of(("g", build_schedule(5)))
    assert "at least every" in problems_of_g("cron:\n- url: /_tasks/cron/g\n  schedule: every 10 minutes\n",
                                             every_five)[0]
    daily = registry_of(("g", build_schedule(at=datetime.time(3))))
    assert problems_of_g("cron:\n- url: /_tasks/cron/g\n  schedule: every 5 minutes\n", daily) == []
    late = problems_of_g("cron:\n- url: /_tasks/cron/g\n  schedule: every day 04:00\n", daily)
    assert "is due at" in late[0]
    wrong_zone = problems_of_g("cron:\n- url: /_tasks/cron/g\n  schedule: every day 03:00\n", daily, "Europe/Berlin")
    assert wrong_zone, "03:00 UTC is not 03:00 in Berlin"
    every_minute = registry_of(("g", build_schedule(crontab=Crontab(hour=None, minute=None))))
    assert problems_of_g("cron:\n- url: /_tasks/cron/g\n  schedule: every 5 minutes\n", every_minute)


calendar_schedules = st.builds(
    lambda minute, hour, weekday: build_schedule(crontab=Crontab(minute=minute, hour=hour, weekday=weekday)),
    st.one_of(st.none(), st.sets(st.integers(0, 59), min_size=1, max_size=3).map(tuple)),
    st.one_of(st.none(), st.sets(st.integers(0, 23), min_size=1, max_size=3).map(tuple)),
    st.one_of(st.none(), st.sets(st.integers(0, 6), min_size=1, max_size=2).map(tuple)))
any_schedule = st.one_of(
    st.integers(0, 24 * 60).map(build_schedule),
    st.builds(lambda h, m: build_schedule(at=datetime.time(h, m)), st.integers(0, 23), st.integers(0, 59)),
    calendar_schedules)


@settings(max_examples=25, deadline=None)
@given(schedules=st.lists(any_schedule, min_size=1, max_size=3),
       timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
def test_generated_plans_always_cover_their_group(schedules, timezone):
    registry = registry_of(*[("g", s) for s in schedules])
    entries = parse_cron_yaml(render_cron_yaml(plan_cron(registry, timezone)))
    assert coverage_problems(entries, registry, timezone, start=utc(2026, 3, 25), days=9) == []


def test_cli_prints_the_cron_yaml_of_the_app(tmp_path):
    from core import create_app
    from core.cli import init_app
    from core.config import Settings

    app = create_app({}, settings=Settings(tasks_backend="inline", tasks_secret="s", secret_key="k",
                                           local_data_dir=tmp_path))
    init_app(app)
    init_app(app)  # idempotent
    result = app.test_cli_runner().invoke(args=["tasks", "cron-yaml"])
    assert result.exit_code == 0, result.output
    entries = parse_cron_yaml(result.output)
    registry = app.extensions["core"].registry
    assert coverage_problems(entries, registry) == []
    assert {e.group for e in entries} == {spec.cron_name for spec in registry.periodic.values()}
    written = tmp_path / "written.yaml"
    assert app.test_cli_runner().invoke(args=["tasks", "cron-yaml", "-o", str(written)]).exit_code == 0
    assert written.read_text() == result.output
    check = app.test_cli_runner().invoke(args=["tasks", "cron-yaml", "--check", str(written)])
    assert check.exit_code == 0 and "covers every cron group" in check.output
    written.write_text("cron: []\n")
    check = app.test_cli_runner().invoke(args=["tasks", "cron-yaml", "--check", str(written)])
    assert check.exit_code == 1 and "has no entry" in check.output


def test_the_repository_cron_yaml_covers_every_group_of_the_example_app(tmp_path):
    """Fails when a cron group declared by ``main.py``'s app is missing from ``cron.yaml``."""
    lacking = tmp_path / "lacking.yaml"
    entries = yaml.safe_load((REPO / "cron.yaml").read_text())["cron"]
    lacking.write_text(yaml.safe_dump({"cron": [e for e in entries if not e["url"].endswith("/nightly")]}))
    script = (
        "import sys, main\n"
        "from core.tasks.periodic.cronyaml import coverage_problems, load_cron_yaml\n"
        "runtime = main.app.extensions['core']\n"
        "print(sorted({s.cron_name for s in runtime.registry.periodic.values()}))\n"
        "for path in sys.argv[1:]:\n"
        "    print(coverage_problems(load_cron_yaml(path), runtime.registry, runtime.settings.tasks_timezone))\n")
    env = {**os.environ, "LOCAL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("TASKS_TIMEZONE", None)
    result = subprocess.run([sys.executable, "-c", script, str(REPO / "cron.yaml"), str(lacking)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    groups, repository, without_nightly = result.stdout.strip().splitlines()[-3:]
    assert {"default", "minutely", "nightly"} <= set(eval(groups))  # noqa: S307 - our own output
    assert repository == "[]", f"cron.yaml does not cover the example app: {repository}"
    assert "'nightly' has no entry" in without_nightly


# --- the local pinger -------------------------------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, float]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).received.append((self.path, self.headers.get(SIGNATURE_HEADER, ""), time.time()))
        status = 404 if self.path.endswith("/missing") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_pinger_sends_signed_pings_on_schedule_and_stops(recorder, tmp_path):
    cron_yaml = tmp_path / "cron.yaml"
    cron_yaml.write_text("cron:\n"
                         "- url: /_tasks/cron/minutely\n  schedule: every 1 minutes\n"
                         "- url: /_tasks/cron/missing\n  schedule: every 1 minutes\n"
                         "- url: /_tasks/cron/nightly\n  schedule: every day 03:00\n")
    port = recorder.server_address[1]
    pinger = CronPinger(f"http://127.0.0.1:{port}", "the-secret", cron_yaml, initial_delay=0.2).start()
    try:
        deadline = time.monotonic() + 20
        while len(_Recorder.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pinger.stop()
    paths = sorted(path for path, _, _ in _Recorder.received)
    assert paths == ["/_tasks/cron/minutely", "/_tasks/cron/missing"]  # nightly waits for 03:00
    for path, signature, _ in _Recorder.received:
        verify_signature("the-secret", "GET", path, b"", signature, max_age=CRON_MAX_AGE)
    assert sorted(pinger.sent) == [("/_tasks/cron/minutely", 200), ("/_tasks/cron/missing", 404)]
    count = len(_Recorder.received)
    time.sleep(0.3)
    assert len(_Recorder.received) == count, "no pings after stop()"


def test_pinger_without_a_cron_yaml_does_nothing(tmp_path):
    pinger = CronPinger("http://127.0.0.1:9", "s", tmp_path / "none.yaml").start()
    pinger.stop()
    assert pinger.sent == []
