"""Cloud Scheduler jobs from the code: which jobs should exist, and what changes get there.

Pure values and functions, no Google library: :func:`desired_jobs` turns the cron plans of
:mod:`core.tasks.periodic.cronyaml` (one per cron group, each fine enough for its tasks) into one
:class:`JobSpec` per group, with the schedule as a unix-cron string; :func:`plan_changes`
compares them with the jobs that exist and answers what to add, update and delete. Only jobs
whose id starts with the configured prefix are ours; any other job is never touched.
:mod:`core.tasks.periodic.cloudscheduler` applies the changes through the API.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from core.tasks.periodic.cronyaml import CalendarPing, CronPlan, IntervalPing, parse_schedule

#: Job ids are ``[A-Za-z0-9_-]{1,500}``.
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")
DEFAULT_TIME_ZONE = "Etc/UTC"


def unix_cron(schedule_text: str) -> str:
    """The unix-cron string of a cron.yaml schedule that :func:`core.tasks.periodic.cronyaml.plan_group` writes.

    ``every N minutes|hours [synchronized]`` with N dividing an hour or a day becomes a
    ``*/N`` step (pings at whole multiples, as ``synchronized`` does), and calendar schedules
    (``every day 03:00``, ``every mon,fri 09:00``, ``1,15 of month 00:00``) their fields. Other
    schedules raise ``ValueError``.
    """
    schedule = parse_schedule(schedule_text)
    if isinstance(schedule, IntervalPing):
        if schedule.window is not None:
            raise ValueError(f"cannot express {schedule_text!r} as one unix-cron schedule")
        minutes = schedule.every.total_seconds() / 60
        if minutes < 60 and minutes.is_integer() and 60 % minutes == 0:
            return "* * * * *" if minutes == 1 else f"*/{int(minutes)} * * * *"
        hours = minutes / 60
        if hours.is_integer() and 24 % hours == 0:
            if hours == 24:
                return "0 0 * * *"
            return "0 * * * *" if hours == 1 else f"0 */{int(hours)} * * *"
        raise ValueError(f"the period of {schedule_text!r} does not divide an hour or a day")
    assert isinstance(schedule, CalendarPing)
    cron = schedule.schedule.crontab
    if schedule.schedule.second:
        raise ValueError(f"unix-cron has no seconds: {schedule_text!r}")

    def field(values: Sequence[int] | None) -> str:
        return "*" if values is None else ",".join(str(v) for v in values)

    # Our weekdays count from Monday = 0, unix-cron's from Sunday = 0.
    weekdays = None if cron.weekdays is None else sorted((d + 1) % 7 for d in cron.weekdays)
    return " ".join((field(cron.minutes), field(cron.hours), field(cron.days), field(cron.months), field(weekdays)))


def job_id(prefix: str, group: str) -> str:
    """The id of a group's job: the prefix and the group, made safe (with a digest when changed)."""
    safe = _UNSAFE_RE.sub("-", group)
    if safe != group:
        safe += "-" + hashlib.sha256(group.encode("utf-8")).hexdigest()[:8]
    identifier = prefix + safe
    if not _JOB_ID_RE.match(identifier):
        raise ValueError(f"cannot name a Cloud Scheduler job {identifier!r}: ids are [A-Za-z0-9_-]{{1,500}}")
    return identifier


def _check_prefix(prefix: str) -> None:
    if not prefix:
        raise ValueError("a job name prefix is needed (TASKS_SCHEDULER_PREFIX): without one every job of "
                         "the location would look like ours")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What a job of ours says: the fields :func:`plan_changes` compares."""

    job_id: str
    schedule: str
    time_zone: str
    uri: str
    service_account: str
    audience: str
    description: str = ""


#: Field of :class:`JobSpec` → field path of the API's ``Job`` (the update mask).
JOB_FIELDS = {"schedule": "schedule", "time_zone": "time_zone", "description": "description",
              "uri": "http_target", "service_account": "http_target", "audience": "http_target"}


@dataclasses.dataclass(frozen=True)
class JobChange:
    """One step: ``add`` / ``update`` carry the wanted spec, ``delete`` only the id."""

    action: str
    job_id: str
    spec: JobSpec | None = None
    #: For an update, the :class:`JobSpec` fields that differ.
    fields: tuple[str, ...] = ()

    @property
    def update_mask(self) -> list[str]:
        return sorted({JOB_FIELDS[name] for name in self.fields})

    def describe(self) -> str:
        """``+ added <id> (<schedule>) ...`` / ``~ updated <id>: fields`` / ``- deleted <id>``."""
        if self.action == "add":
            assert self.spec is not None
            return f"+ added {self.job_id} ({self.spec.schedule} {self.spec.time_zone}) -> {self.spec.uri}"
        if self.action == "update":
            return f"~ updated {self.job_id}: {', '.join(self.fields)}"
        return f"- deleted {self.job_id}"


def desired_jobs(plans: Iterable[CronPlan], *, prefix: str, base_url: str, service_account: str,
                 audience: str) -> list[JobSpec]:
    """One job per cron plan: a signed ``GET`` of ``<base_url>/_tasks/cron/<group>``."""
    _check_prefix(prefix)
    if not base_url:
        raise ValueError("Cloud Scheduler jobs need the app's base URL (TASKS_TARGET_URL)")
    if not service_account:
        raise ValueError("Cloud Scheduler jobs need a service account for their OIDC token (TASKS_SERVICE_ACCOUNT)")
    jobs = []
    for plan in plans:
        jobs.append(JobSpec(
            job_id=job_id(prefix, plan.group), schedule=unix_cron(plan.schedule),
            time_zone=plan.timezone or DEFAULT_TIME_ZONE, uri=base_url.rstrip("/") + plan.url,
            service_account=service_account, audience=audience or base_url,
            description=f"periodic tasks of cron group {plan.group}",
        ))
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two cron groups map to the same job id: {sorted(ids)}")
    return jobs


def plan_changes(desired: Sequence[JobSpec], existing: Mapping[str, JobSpec], prefix: str) -> list[JobChange]:
    """What turns ``existing`` (job id → spec, any jobs) into ``desired``; jobs without ``prefix`` stay."""
    _check_prefix(prefix)
    changes = []
    wanted = {job.job_id: job for job in desired}
    for job in desired:
        current = existing.get(job.job_id)
        if current is None:
            changes.append(JobChange("add", job.job_id, job))
            continue
        differing = tuple(f.name for f in dataclasses.fields(JobSpec)
                          if f.name != "job_id" and getattr(job, f.name) != getattr(current, f.name))
        if differing:
            changes.append(JobChange("update", job.job_id, job, differing))
    for identifier in sorted(existing):
        if identifier.startswith(prefix) and identifier not in wanted:
            changes.append(JobChange("delete", identifier))
    return changes
