"""Periodic and startup tasks through gunicorn, the durable local queue and the Datastore emulator.

Most tests serve :func:`build_app`: the example app plus a few periodic tasks that fail or count on
purpose, with the startup tasks queued at start as the app factory does. One test runs the example
app exactly as ``python main.py`` does, cron pinger included.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from core import db
from core.tasks.auth.signing import sign_cron_ping
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.periodic.kind import STATE_KIND
from example.periodic import count_run
from tests.e2e.conftest import wait_for

APP = "tests.e2e.test_periodic_e2e:build_app()"


@PeriodicTask(datetime.timedelta(hours=1), cronName="e2e-interval")
def e2e_hourly() -> None:
    count_run("e2e_hourly")


@PeriodicTask(0, cronName="e2e-mixed")
def e2e_fails_twice() -> None:
    if count_run("e2e_fails_twice") <= 2:
        raise RuntimeError("failing on purpose")


@PeriodicTask(0, cronName="e2e-mixed")
def e2e_healthy() -> None:
    count_run("e2e_healthy")


def build_app():  # noqa: ANN201 - a gunicorn app factory
    """The served app: the example modules plus this file's tasks; queues the startup tasks."""
    from core import create_app
    from core.tasks.startup import runStartupTasks
    from example import MODULES, SessionUsers

    app = create_app(MODULES, users=SessionUsers(), languages=("en", "de"))
    runStartupTasks(app.extensions["core"])
    return app


def runs(name: str) -> int:
    entity = db.get(db.key("example_run", name))
    return int(entity["count"]) if entity is not None else 0


def state(state_id: str) -> db.Entity | None:
    return db.get(db.key(STATE_KIND, state_id))


def ping(stack, group: str, **headers: str) -> requests.Response:
    path = f"/_tasks/cron/{group}"
    signed = sign_cron_ping(stack.settings.tasks_secret, path) if not headers else headers
    return requests.get(stack.url + path, headers=signed, timeout=30)


def test_example_periodic_tasks_run_on_cron_pings_and_forged_pings_run_nothing(make_stack):
    stack = make_stack(app_module=APP)
    forged = [
        requests.get(stack.url + "/_tasks/cron/default", timeout=30),
        ping(stack, "default", **{"X-Appengine-Cron": "true"}),      # only App Engine may say so
        ping(stack, "default", **sign_cron_ping("wrong-secret", "/_tasks/cron/default")),
        ping(stack, "default", **sign_cron_ping(stack.settings.tasks_secret, "/_tasks/cron/nightly")),
    ]
    assert [r.status_code for r in forged] == [403] * 4
    assert ping(stack, "no-such-group").status_code == 404
    time.sleep(1.0)
    assert db.Query(STATE_KIND).run() == [] and runs("refresh_statistics@maintenance") == 0

    response = ping(stack, "default")
    assert response.status_code == 200
    tasks = response.json()["tasks"]
    assert tasks["example.periodic.Maintenance.refresh_statistics@maintenance"] == "enqueued"
    assert tasks["core.tasks.periodic.sweep_outbox_task"] == "enqueued"
    wait_for(lambda: runs("refresh_statistics@maintenance") == 1, message="the example's periodic task")
    assert db.get(db.key("example_stats", "maintenance")) is not None
    wait_for(lambda: (state("core.tasks.periodic.sweep_outbox_task") or {}).get("runs") == 1,
             message="the built-in outbox sweep")
    nightly = ping(stack, "nightly").json()["tasks"]
    assert nightly == {"example.periodic.Maintenance.purge_drafts@maintenance": "not due"}


def test_twenty_concurrent_pings_run_an_interval_task_once(make_stack):
    stack = make_stack(app_module=APP)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: ping(stack, "e2e-interval"), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    verdicts = [r.json()["tasks"][f"{__name__}.e2e_hourly"] for r in responses]
    assert verdicts.count("enqueued") == 1, verdicts
    wait_for(lambda: runs("e2e_hourly") == 1, message="the run")
    # The run counts itself inside the task body; its success is recorded just after: wait for that.
    wait_for(lambda: (state(f"{__name__}.e2e_hourly") or {}).get("runs") == 1, message="the recorded success")
    for _ in range(5):  # later pings inside the hour
        assert ping(stack, "e2e-interval").json()["tasks"][f"{__name__}.e2e_hourly"] == "not due"
    time.sleep(1.0)
    assert runs("e2e_hourly") == 1
    recorded = state(f"{__name__}.e2e_hourly")
    assert recorded["runs"] == 1 and recorded["generation"] == 1 and recorded["pending_generation"] is None


def test_a_failing_periodic_task_is_retried_and_does_not_stop_the_others(make_stack):
    stack = make_stack(app_module=APP)
    tasks = ping(stack, "e2e-mixed").json()["tasks"]
    assert set(tasks.values()) == {"enqueued"} and len(tasks) == 2
    wait_for(lambda: runs("e2e_healthy") == 1, message="the healthy task")
    wait_for(lambda: (state(f"{__name__}.e2e_fails_twice") or {}).get("runs") == 1, timeout=60,
             message="the failing task to succeed on a retry")
    assert runs("e2e_fails_twice") == 3
    recorded = state(f"{__name__}.e2e_fails_twice")
    assert recorded["failures"] == 2 and "failing on purpose" in recorded["last_error"]
    assert recorded["last_success"] is not None and recorded["pending_generation"] is None


def test_a_startup_task_runs_once_per_version_across_three_processes(make_stack):
    first = make_stack(app_module=APP, workers=3, extra_env={"APP_VERSION": "e2e-v1"})
    assert len(first.worker_pids()) == 3
    wait_for(lambda: runs("startup@e2e-v1") == 1, message="the startup task of e2e-v1")
    time.sleep(1.0)
    assert runs("startup@e2e-v1") == 1
    record = db.get(db.key("_tasks_startup", "e2e-v1"))
    assert record["queued"] == record["done"] == ["example.periodic.record_version_start"]
    first.stop()
    second = make_stack(app_module=APP, workers=3, extra_env={"APP_VERSION": "e2e-v2"})
    assert len(second.worker_pids()) == 3
    wait_for(lambda: runs("startup@e2e-v2") == 1, message="the startup task of e2e-v2")
    time.sleep(1.0)
    assert runs("startup@e2e-v2") == 1 and runs("startup@e2e-v1") == 1


def test_the_local_server_pings_the_cron_groups_of_cron_yaml_by_itself(make_stack):
    stack = make_stack(cron=True)   # main:app with the repository's cron.yaml, as `python main.py`
    wait_for(lambda: runs("tick") >= 1, timeout=60, message="the one-minute group's task without a request")
    wait_for(lambda: runs("refresh_statistics@maintenance") == 1, message="the default group's task")
    assert ("/_tasks/cron/minutely", 200) in stack.cron_pinger.sent


@PeriodicTask(0, cronName="e2e-pausable")
def e2e_pausable() -> None:
    count_run("e2e_pausable")


def test_a_paused_periodic_task_is_not_run_by_five_pings_and_runs_on_the_first_after_resume(make_stack):
    stack = make_stack(app_module=APP)
    name = f"{__name__}.e2e_pausable"
    env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST", "PORT", "TASKS_BACKEND")}
    env["LOCAL_DATA_DIR"] = str(stack.data_dir)

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flask", "--app", APP, "tasks", "periodic", *args],
                              cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                              timeout=120)

    paused = flask("pause", name)
    assert paused.returncode == 0 and paused.stdout.strip() == f"paused {name}", paused.stderr
    for _ in range(5):
        assert ping(stack, "e2e-pausable").json()["tasks"][name] == "paused"
    time.sleep(1.0)
    assert runs("e2e_pausable") == 0
    listed = json.loads(flask("list", "--json").stdout)
    assert [row["paused"] for row in listed if row["name"] == name] == [True]
    refused = flask("run", name)
    assert refused.returncode == 1 and "is paused: resume it first" in refused.stderr

    assert flask("resume", name).returncode == 0
    assert ping(stack, "e2e-pausable").json()["tasks"][name] == "enqueued"
    wait_for(lambda: runs("e2e_pausable") == 1, message="the first run after resume")
