"""A queue's signed push over HTTP, as the server hands it to the direct-push entry: status and X-Task-Outcome."""
from __future__ import annotations

import json
import uuid

import requests

from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.testing import on_every_server
from tests.e2e.conftest import probe_runs


def _push(stack, target: str, *args: object) -> requests.Response:
    task_id = uuid.uuid4().hex
    body = json.dumps({"v": 1, "id": task_id, "kind": "deferred", "queue": "default", "created": 0, "env": {},
                       "payload": {"target": target, "instance": None, "args": list(args), "kwargs": {}}}).encode()
    headers = {SIGNATURE_HEADER: sign_request(stack.settings.tasks_secret, "POST", "/_tasks/deferred", body),
               "Content-Type": "application/json", "X-AppEngine-QueueName": "default",
               "X-AppEngine-TaskName": task_id, "X-AppEngine-TaskRetryCount": "0",
               "X-AppEngine-TaskExecutionCount": "0"}
    return requests.post(stack.url + "/_tasks/deferred", data=body, headers=headers, timeout=30)


@on_every_server
def test_a_push_answers_its_outcome_in_x_task_outcome(probe_stack):
    token = uuid.uuid4().hex
    done = _push(probe_stack, "tests.e2e.app.slow", token, 0)
    assert (done.status_code, done.headers["X-Task-Outcome"]) == (200, "ok"), done.text
    failed = _push(probe_stack, "tests.e2e.app.flaky", token, 5)
    assert failed.status_code >= 500 and failed.headers["X-Task-Outcome"] not in ("", "ok"), failed.text
    permanent = _push(probe_stack, "tests.e2e.app.permanent", token)
    assert permanent.status_code < 300 and permanent.headers["X-Task-Outcome"] == "PermanentTaskFailure"
    assert {run["probe"] for run in probe_runs(token)} == {"slow", "flaky", "permanent"}
