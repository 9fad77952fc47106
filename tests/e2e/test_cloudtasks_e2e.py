"""The production transport end to end: gunicorn → Cloud Tasks (gcloud-tasks-emulator) → gunicorn."""
from __future__ import annotations

import uuid

import requests

from core import db
from core.devserver.ports import free_port
from example.users import create_user
from tests.e2e.conftest import probe_runs, sign_in, wait_for
from tests.services.tasks_emulator import start_tasks_emulator

PROJECT, LOCATION = "local-project", "europe-west1"


def test_deferred_call_travels_through_cloud_tasks(make_stack):
    port = free_port()
    with start_tasks_emulator(target_port=port, queues=["default", "background", "query-iter"], max_retries=3,
                              project=PROJECT, location=LOCATION) as emulator:
        stack = make_stack(port=port, app_module="tests.e2e.app:app",
                           extra_env={"TASKS_BACKEND": "cloudtasks", "TASKS_EMULATOR": emulator.host,
                                      "GOOGLE_CLOUD_PROJECT": PROJECT, "TASKS_REGION": LOCATION})
        create_user("grace", "pass-word-1")
        session = requests.Session()
        sign_in(session, stack.url, "grace", "pass-word-1")
        session.post(stack.url + "/invoices/close_month", data={"month": "2031-01"},
                     headers={"Accept-Language": "de"}).raise_for_status()
        total = wait_for(lambda: db.get(db.key("invoice_total", "2031-01")), message="the task via Cloud Tasks")
        assert total["computed_by"] == "grace" and total["language"] == "de"

        # A task that fails twice is retried by the emulator and succeeds on the third execution.
        token = uuid.uuid4().hex
        session.post(stack.url + "/probes/flaky", data={"token": token, "failures": "2"}).raise_for_status()
        wait_for(lambda: len(probe_runs(token)) >= 3, message="three executions")

        # 40 calls in one request: kept with one outbox write, created after the response.
        token = uuid.uuid4().hex
        session.post(stack.url + "/probes/slow",
                     data={"token": token, "count": "40", "seconds": "0"}).raise_for_status()
        wait_for(lambda: len(probe_runs(token)) >= 40, message="all 40 tasks")
        wait_for(lambda: db.Query("_tasks_outbox").run() == [], message="the outbox to empty")
