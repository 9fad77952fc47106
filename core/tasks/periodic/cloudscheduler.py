"""Google Cloud Scheduler adapter: makes the jobs of :mod:`core.tasks.periodic.scheduler_plan` exist.

One of the few modules that import Google Cloud libraries, and the only one for Cloud Scheduler.
:func:`sync_scheduler` lists the location's jobs, keeps those whose id has the configured prefix
as ours, and creates, updates and deletes them so that every cron group of the code is pinged
by an HTTP ``GET`` of ``/_tasks/cron/<group>`` carrying an OIDC token (the cron route accepts
exactly that outside local development). Nothing connects before the call.
"""
from __future__ import annotations

from typing import Any

import grpc
from google.cloud import scheduler_v1
from google.cloud.scheduler_v1.services.cloud_scheduler.transports import CloudSchedulerGrpcTransport
from google.protobuf import field_mask_pb2

from core.config import Settings
from core.tasks.errors import ConfigurationError
from core.tasks.google_admin import BOUNDED, admin_calls
from core.tasks.periodic.cronyaml import plan_cron
from core.tasks.periodic.scheduler_plan import JobChange, JobSpec, desired_jobs, plan_changes


def location_path(settings: Settings) -> str:
    """``projects/{project}/locations/{region}`` of the jobs (``TASKS_SCHEDULER_REGION`` or the tasks region)."""
    return f"projects/{settings.project}/locations/{settings.tasks_scheduler_region or settings.tasks_region}"


def make_client(settings: Settings) -> scheduler_v1.CloudSchedulerClient:
    """Insecure gRPC to ``TASKS_SCHEDULER_EMULATOR`` when set (tests), else application default credentials."""
    if settings.tasks_scheduler_emulator_host:
        channel = grpc.insecure_channel(settings.tasks_scheduler_emulator_host)
        return scheduler_v1.CloudSchedulerClient(transport=CloudSchedulerGrpcTransport(channel=channel))
    return scheduler_v1.CloudSchedulerClient()


def wanted_jobs(settings: Settings, registry: Any) -> list[JobSpec]:
    """The jobs the code asks for: one per cron group, signed by the first service account."""
    if settings.tasks_target != "http":
        # The cron route trusts an OIDC token only with HTTP targets; App Engine's cron uses cron.yaml.
        raise ConfigurationError("Cloud Scheduler jobs ping over HTTP with an OIDC token, which the app accepts "
                                 "with TASKS_TARGET=http; on App Engine deploy cron.yaml instead")
    accounts = settings.tasks_service_accounts
    try:
        return desired_jobs(plan_cron(registry, settings.tasks_timezone), prefix=settings.tasks_scheduler_prefix,
                            base_url=settings.tasks_target_url or "",
                            service_account=accounts[0] if accounts else "",
                            audience=settings.tasks_oidc_audience or settings.tasks_target_url or "")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def job_message(settings: Settings, spec: JobSpec) -> scheduler_v1.Job:
    """The API's ``Job`` for a spec."""
    return scheduler_v1.Job(
        name=f"{location_path(settings)}/jobs/{spec.job_id}",
        description=spec.description,
        schedule=spec.schedule,
        time_zone=spec.time_zone,
        http_target=scheduler_v1.HttpTarget(
            uri=spec.uri, http_method=scheduler_v1.HttpMethod.GET,
            oidc_token=scheduler_v1.OidcToken(service_account_email=spec.service_account, audience=spec.audience),
        ),
    )


def spec_of(job: scheduler_v1.Job) -> JobSpec:
    """What an existing job says, in the terms :func:`plan_changes` compares."""
    target = job.http_target
    method_ok = target.http_method in (scheduler_v1.HttpMethod.GET, scheduler_v1.HttpMethod.HTTP_METHOD_UNSPECIFIED)
    return JobSpec(
        job_id=job.name.rsplit("/", 1)[-1], schedule=job.schedule, time_zone=job.time_zone,
        # A job of ours with another method or target is rewritten, as if its address differed.
        uri=target.uri if method_ok else "",
        service_account=target.oidc_token.service_account_email, audience=target.oidc_token.audience,
        description=job.description,
    )


def sync_scheduler(settings: Settings, registry: Any, *, dry_run: bool = False,
                   client: scheduler_v1.CloudSchedulerClient | None = None) -> list[JobChange]:
    """Create, update and delete our jobs until they match the code; returns the changes (made or, dry, planned).

    Raises :class:`ConfigurationError` for settings that cannot make a job, or naming the step the
    API refused.
    """
    desired = wanted_jobs(settings, registry)
    api = make_client(settings) if client is None else client
    parent = location_path(settings)
    with admin_calls("Cloud Scheduler", api, f"listing the jobs of {parent}", close=client is None) as step:
        existing = {spec.job_id: spec for spec in map(spec_of, api.list_jobs(parent=parent, **BOUNDED))}
        changes = plan_changes(desired, existing, settings.tasks_scheduler_prefix)
        if not dry_run:
            for change in changes:
                step.now = f"{change.action.rstrip('e')}ing job {change.job_id}"
                _apply(api, settings, parent, change)
        return changes


def _apply(api: scheduler_v1.CloudSchedulerClient, settings: Settings, parent: str, change: JobChange) -> None:
    if change.action == "delete":
        api.delete_job(name=f"{parent}/jobs/{change.job_id}", **BOUNDED)
        return
    assert change.spec is not None
    job = job_message(settings, change.spec)
    if change.action == "add":
        api.create_job(parent=parent, job=job, **BOUNDED)
    else:
        api.update_job(job=job, update_mask=field_mask_pb2.FieldMask(paths=change.update_mask), **BOUNDED)

