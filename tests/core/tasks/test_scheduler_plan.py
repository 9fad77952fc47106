"""Planning Cloud Scheduler jobs: unix-cron strings, job ids and the diff against existing jobs."""
from __future__ import annotations

import datetime

import pytest

from core.tasks.periodic.cronyaml import NICE_PERIODS, CronPlan, plan_group
from core.tasks.periodic.schedule import Crontab, build_schedule
from core.tasks.periodic.scheduler_plan import JobSpec, desired_jobs, job_id, plan_changes, unix_cron


@pytest.mark.parametrize(("text", "expected"), [
    ("every 1 minutes", "* * * * *"),
    ("every 5 minutes", "*/5 * * * *"),
    ("every 30 minutes synchronized", "*/30 * * * *"),
    ("every 1 hours", "0 * * * *"),
    ("every 6 hours synchronized", "0 */6 * * *"),
    ("every 24 hours", "0 0 * * *"),
    ("every day 03:00", "0 3 * * *"),
    ("every monday 09:30", "30 9 * * 1"),
    ("every sun,sat 07:05", "5 7 * * 0,6"),
    ("1,15 of month 00:00", "0 0 1,15 * *"),
    ("1 of jan,jul 06:00", "0 6 1 1,7 *"),
])
def test_unix_cron(text, expected):
    assert unix_cron(text) == expected


@pytest.mark.parametrize("text", ["every 7 minutes", "every 5 hours", "every 10 minutes from 08:00 to 18:00",
                                  "every fortnight"])
def test_schedules_unix_cron_cannot_say_are_refused(text):
    with pytest.raises(ValueError):
        unix_cron(text)


@pytest.mark.parametrize("minutes", NICE_PERIODS)
def test_every_period_a_plan_can_choose_has_a_unix_cron(minutes):
    schedule = build_schedule(interval=datetime.timedelta(minutes=minutes))
    plan = plan_group("g", [schedule])
    fields = unix_cron(plan.schedule).split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"]


def test_calendar_plans_keep_their_zone():
    schedule = build_schedule(crontab=Crontab(hour=4, minute=15))
    [job] = desired_jobs([plan_group("nightly", [schedule], "Europe/Berlin")], prefix="p-",
                         base_url="https://a.example.com/", service_account="sa@x", audience="")
    assert (job.schedule, job.time_zone, job.uri, job.audience) == (
        "15 4 * * *", "Europe/Berlin", "https://a.example.com/_tasks/cron/nightly", "https://a.example.com/")


def test_job_ids_are_safe_and_distinct():
    assert job_id("tasks-cron-", "default") == "tasks-cron-default"
    dotted, spaced = job_id("tasks-cron-", "a.b"), job_id("tasks-cron-", "a b")
    assert dotted.startswith("tasks-cron-a-b-") and spaced.startswith("tasks-cron-a-b-") and dotted != spaced
    with pytest.raises(ValueError, match="ids are"):
        job_id("bad/prefix-", "default")


def spec(name: str, schedule: str = "*/5 * * * *", **changes: str) -> JobSpec:
    values = {"job_id": name, "schedule": schedule, "time_zone": "Etc/UTC", "uri": f"https://a/_tasks/cron/{name}",
              "service_account": "sa@x", "audience": "https://a", "description": ""}
    values.update(changes)
    return JobSpec(**values)


def test_plan_changes_touches_only_prefixed_jobs():
    desired = [spec("p-a"), spec("p-b", "0 * * * *"), spec("p-c")]
    existing = {"p-a": spec("p-a"), "p-b": spec("p-b", "*/5 * * * *", audience="old"), "p-old": spec("p-old"),
                "mine": spec("mine")}
    changes = plan_changes(desired, existing, "p-")
    assert [(c.action, c.job_id, c.fields) for c in changes] == [
        ("update", "p-b", ("schedule", "audience")), ("add", "p-c", ()), ("delete", "p-old", ())]
    assert changes[0].update_mask == ["http_target", "schedule"]
    assert plan_changes(desired, {s.job_id: s for s in desired}, "p-") == []
    with pytest.raises(ValueError, match="prefix"):
        plan_changes(desired, existing, "")


def test_desired_jobs_need_an_address_and_an_account():
    plans = [CronPlan("default", "every 5 minutes")]
    with pytest.raises(ValueError, match="TASKS_TARGET_URL"):
        desired_jobs(plans, prefix="p-", base_url="", service_account="sa@x", audience="")
    with pytest.raises(ValueError, match="TASKS_SERVICE_ACCOUNT"):
        desired_jobs(plans, prefix="p-", base_url="https://a", service_account="", audience="")
