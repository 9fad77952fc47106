"""``flask tasks sync-scheduler`` against an in-process gRPC server speaking Cloud Scheduler.

No emulator exists for Cloud Scheduler, so :class:`FakeScheduler` implements the four methods the
sync calls (ListJobs, CreateJob, UpdateJob, DeleteJob) over real gRPC on a free port, keeps the
jobs like the service does and records every request, which the tests assert on.
"""
from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.cloud import scheduler_v1
from google.protobuf import empty_pb2

from core.tasks.errors import ConfigurationError
from core.tasks.periodic.cloudscheduler import job_message, spec_of, sync_scheduler
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.periodic.schedule import Crontab
from core.tasks.registry import TaskRegistry, isolated_registry

PARENT = "projects/cron-project/locations/europe-west1"
ACCOUNTS = "tasks@cron-project.iam.gserviceaccount.com, old@cron-project.iam.gserviceaccount.com"
SIGNER = "tasks@cron-project.iam.gserviceaccount.com"
APP_URL = "https://app-abc.a.run.app"
AUDIENCE = "https://app-abc.a.run.app/audience"


class FakeScheduler:
    """Cloud Scheduler's job store behind its real gRPC method names; ``requests`` logs each call."""

    SERVICE = "google.cloud.scheduler.v1.CloudScheduler"

    def __init__(self) -> None:
        self.jobs: dict[str, scheduler_v1.Job] = {}
        self.requests: list[tuple[str, object]] = []
        #: A method that answers PERMISSION_DENIED.
        self.refuse: str | None = None
        self._lock = threading.Lock()

        def method(func, request_type, response_type):
            return grpc.unary_unary_rpc_method_handler(
                func, request_deserializer=request_type.deserialize, response_serializer=response_type.serialize)

        handlers = {
            "ListJobs": method(self._list, scheduler_v1.ListJobsRequest, scheduler_v1.ListJobsResponse),
            "CreateJob": method(self._create, scheduler_v1.CreateJobRequest, scheduler_v1.Job),
            "UpdateJob": method(self._update, scheduler_v1.UpdateJobRequest, scheduler_v1.Job),
            "DeleteJob": grpc.unary_unary_rpc_method_handler(
                self._delete, request_deserializer=scheduler_v1.DeleteJobRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(self.SERVICE, handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def writes(self) -> list[tuple[str, object]]:
        return [(name, request) for name, request in self.requests if name != "ListJobs"]

    def _log(self, name: str, request: object, context: grpc.ServicerContext) -> None:
        self.requests.append((name, request))
        if name == self.refuse:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "The caller does not have permission")

    def _list(self, request: scheduler_v1.ListJobsRequest, context: grpc.ServicerContext) -> object:
        with self._lock:
            self._log("ListJobs", request, context)
            # Two pages when there are more than two jobs, so the client must follow the token.
            names = sorted(name for name in self.jobs if name.startswith(request.parent + "/jobs/"))
            start = int(request.page_token or 0)
            page = names[start:start + 2]
            token = str(start + 2) if start + 2 < len(names) else ""
            return scheduler_v1.ListJobsResponse(jobs=[self.jobs[n] for n in page], next_page_token=token)

    def _create(self, request: scheduler_v1.CreateJobRequest, context: grpc.ServicerContext) -> object:
        with self._lock:
            self._log("CreateJob", request, context)
            job = request.job
            if job.name in self.jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Job already exists")
            self.jobs[job.name] = job
            return job

    def _update(self, request: scheduler_v1.UpdateJobRequest, context: grpc.ServicerContext) -> object:
        with self._lock:
            self._log("UpdateJob", request, context)
            current = self.jobs.get(request.job.name)
            if current is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Job not found")
            for path in request.update_mask.paths:
                setattr(current, path, getattr(request.job, path))
            return current

    def _delete(self, request: scheduler_v1.DeleteJobRequest, context: grpc.ServicerContext) -> object:
        with self._lock:
            self._log("DeleteJob", request, context)
            if self.jobs.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Job not found")
            return empty_pb2.Empty()


@pytest.fixture
def scheduler() -> Iterator[FakeScheduler]:
    fake = FakeScheduler()
    yield fake
    fake.server.stop(grace=None)


@pytest.fixture
def cron_settings(settings, scheduler: FakeScheduler):
    return settings.replace(project="cron-project", tasks_region="europe-west1", tasks_target="http",
                            tasks_target_url=APP_URL,
                            tasks_service_account=ACCOUNTS, tasks_oidc_audience=AUDIENCE,
                            tasks_scheduler_emulator_host=scheduler.host)


def hourly() -> None: ...
def every_ten_minutes() -> None: ...
def mondays() -> None: ...


def declare(reports_interval: datetime.timedelta = datetime.timedelta(hours=1), *,
            with_weekly: bool = True) -> TaskRegistry:
    """Three cron groups (and the built-in sweep's ``default``): ``reports``, ``fast``, ``weekly``."""
    with isolated_registry() as registry:
        PeriodicTask(reports_interval, cronName="reports")(hourly)
        PeriodicTask(datetime.timedelta(minutes=10), cronName="fast")(every_ten_minutes)
        if with_weekly:
            PeriodicTask(crontab=Crontab(weekday=0, hour=9, minute=30), cronName="weekly")(mondays)
    return registry


def run_cli(make_app, settings, registry: TaskRegistry, *args: str):
    app = make_app({}, settings=settings, registry=registry)
    result = app.test_cli_runner().invoke(args=["tasks", "sync-scheduler", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def job(name: str) -> str:
    return f"{PARENT}/jobs/{name}"


def test_sync_adds_then_keeps_updates_and_deletes_only_our_jobs(make_app, cron_settings, scheduler):
    foreign = scheduler_v1.Job(name=job("nightly-backup"), schedule="0 3 * * *", time_zone="Etc/UTC",
                               http_target=scheduler_v1.HttpTarget(uri="https://elsewhere.example.com/backup"))
    scheduler.jobs[foreign.name] = foreign

    # First run: one job per cron group, nothing else touched.
    lines = run_cli(make_app, cron_settings, declare())
    created = {request.job.name: request.job for name, request in scheduler.writes()}
    assert [name for name, _ in scheduler.writes()] == ["CreateJob"] * 4
    assert sorted(created) == [job("tasks-cron-default"), job("tasks-cron-fast"), job("tasks-cron-reports"),
                               job("tasks-cron-weekly")]
    assert {request.parent for _, request in scheduler.writes()} == {PARENT}
    assert sorted(line.split()[2] for line in lines) == ["tasks-cron-default", "tasks-cron-fast",
                                                          "tasks-cron-reports", "tasks-cron-weekly"]
    assert all(line.startswith("+ added ") for line in lines)
    for created_job in created.values():
        target = created_job.http_target
        group = created_job.name.rsplit("-", 1)[-1]
        assert target.uri == f"{APP_URL}/_tasks/cron/{group}"
        assert target.http_method == scheduler_v1.HttpMethod.GET
        assert target.oidc_token.service_account_email == SIGNER
        assert target.oidc_token.audience == AUDIENCE
    assert created[job("tasks-cron-reports")].schedule == "0 * * * *"
    assert created[job("tasks-cron-fast")].schedule == "*/10 * * * *"
    assert created[job("tasks-cron-weekly")].schedule == "30 9 * * 1"
    assert created[job("tasks-cron-weekly")].time_zone == "Etc/UTC"

    # Second run: nothing to change, no write at all.
    scheduler.requests.clear()
    assert run_cli(make_app, cron_settings, declare()) == ["Cloud Scheduler jobs are up to date"]
    assert scheduler.writes() == [] and scheduler.requests, "the jobs were listed, not changed"

    # A task of one group runs more often: that one job is updated, only its schedule.
    scheduler.requests.clear()
    lines = run_cli(make_app, cron_settings, declare(datetime.timedelta(minutes=30)))
    assert lines == ["~ updated tasks-cron-reports: schedule"]
    [(name, update)] = scheduler.writes()
    assert name == "UpdateJob" and update.job.name == job("tasks-cron-reports")
    assert list(update.update_mask.paths) == ["schedule"] and update.job.schedule == "*/30 * * * *"
    assert update.job.http_target.oidc_token.service_account_email == SIGNER
    assert scheduler.jobs[job("tasks-cron-reports")].schedule == "*/30 * * * *"

    # A group disappears from the code: its job goes; the foreign job stays as it was.
    scheduler.requests.clear()
    lines = run_cli(make_app, cron_settings, declare(datetime.timedelta(minutes=30), with_weekly=False))
    assert lines == ["- deleted tasks-cron-weekly"]
    assert [(name, request.name) for name, request in scheduler.writes()] == [("DeleteJob", job("tasks-cron-weekly"))]
    assert scheduler.jobs[foreign.name] == foreign
    assert sorted(scheduler.jobs) == [job("nightly-backup"), job("tasks-cron-default"), job("tasks-cron-fast"),
                                      job("tasks-cron-reports")]


def test_a_changed_audience_or_account_rewrites_the_target(make_app, cron_settings, scheduler):
    run_cli(make_app, cron_settings, declare())
    scheduler.requests.clear()
    lines = run_cli(make_app, cron_settings.replace(tasks_oidc_audience="https://new-audience"), declare())
    assert sorted(lines) == [f"~ updated tasks-cron-{group}: audience"
                             for group in ("default", "fast", "reports", "weekly")]
    for name, request in scheduler.writes():
        assert name == "UpdateJob" and list(request.update_mask.paths) == ["http_target"]
        assert request.job.http_target.oidc_token.audience == "https://new-audience"
        assert request.job.http_target.oidc_token.service_account_email == SIGNER


def test_dry_run_prints_the_plan_and_changes_nothing(make_app, cron_settings, scheduler):
    lines = run_cli(make_app, cron_settings, declare(), "--dry-run")
    assert len([line for line in lines if line.startswith("+ added ")]) == 4
    assert lines[-1] == "dry run: nothing was changed"
    assert scheduler.writes() == [] and scheduler.jobs == {}

    run_cli(make_app, cron_settings, declare())
    scheduler.requests.clear()
    lines = run_cli(make_app, cron_settings, declare(datetime.timedelta(minutes=30), with_weekly=False), "--dry-run")
    assert lines == ["~ updated tasks-cron-reports: schedule", "- deleted tasks-cron-weekly",
                     "dry run: nothing was changed"]
    assert scheduler.writes() == []
    assert scheduler.jobs[job("tasks-cron-reports")].schedule == "0 * * * *"


def test_another_prefix_owns_other_jobs(make_app, cron_settings, scheduler):
    run_cli(make_app, cron_settings, declare())
    scheduler.requests.clear()
    staging = cron_settings.replace(tasks_scheduler_prefix="staging-")
    lines = run_cli(make_app, staging, declare(with_weekly=False))
    assert all(line.startswith("+ added staging-") for line in lines) and len(lines) == 3
    assert {name for name, _ in scheduler.writes()} == {"CreateJob"}
    assert len(scheduler.jobs) == 7


def test_settings_that_cannot_make_a_job_fail_before_any_call(make_app, cron_settings, scheduler):
    for changes, message in (({"tasks_target": "appengine"}, "TASKS_TARGET=http"),
                             ({"tasks_target_url": None}, "TASKS_TARGET_URL"),
                             ({"tasks_service_account": " , "}, "TASKS_SERVICE_ACCOUNT"),
                             ({"tasks_scheduler_prefix": ""}, "prefix")):
        app = make_app({}, settings=cron_settings.replace(**changes), registry=declare())
        result = app.test_cli_runner().invoke(args=["tasks", "sync-scheduler"])
        assert result.exit_code != 0 and message in result.output, result.output
    assert scheduler.writes() == []


def test_a_refusal_names_the_step(cron_settings, scheduler):
    scheduler.jobs[job("tasks-cron-gone")] = scheduler_v1.Job(name=job("tasks-cron-gone"))
    scheduler.refuse = "DeleteJob"
    with pytest.raises(ConfigurationError, match="Cloud Scheduler refused deleting job tasks-cron-gone"):
        sync_scheduler(cron_settings, declare())
    scheduler.refuse = "ListJobs"
    with pytest.raises(ConfigurationError, match=f"Cloud Scheduler refused listing the jobs of {PARENT}"):
        sync_scheduler(cron_settings, declare())


def test_job_message_round_trips_through_spec_of(cron_settings):
    from core.tasks.periodic.cloudscheduler import wanted_jobs

    for spec in wanted_jobs(cron_settings, declare()):
        assert spec_of(job_message(cron_settings, spec)) == spec
