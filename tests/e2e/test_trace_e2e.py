"""Traces follow the task through gunicorn and the durable local queue; its log lines are Cloud Logging JSON."""
from __future__ import annotations

import json
import uuid

import pytest
import requests

from core import db
from tests.e2e.conftest import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def trace_stack(make_stack):
    # LOG_FORMAT=json: what App Engine and Cloud Run get by default, forced on one machine.
    return make_stack(app_module="tests.e2e.trace_app:app", extra_env={"LOG_FORMAT": "json"})


def json_lines(stack, needle: str) -> list[dict]:
    lines = []
    for text in stack.log_tail("gunicorn", size=1_000_000).splitlines():
        if needle in text and text.startswith("{"):
            lines.append(json.loads(text))
    return lines


@pytest.mark.parametrize(("headers", "span_id", "sampled"), [
    ({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}, SPAN_ID, True),
    ({"X-Cloud-Trace-Context": f"{TRACE_ID.upper()}/{int(SPAN_ID, 16)};o=0"}, SPAN_ID, False),
])
def test_the_task_runs_and_logs_in_the_trace_of_the_deferring_request(trace_stack, headers, span_id, sampled):
    token = uuid.uuid4().hex
    response = requests.post(trace_stack.url + "/trace/defer", data={"token": token}, headers=headers)
    assert response.status_code == 200, response.text
    probe = wait_for(lambda: db.get(db.key("trace_probe", token)), message="the traced task to run")
    assert (probe["trace_id"], probe["span_id"], probe["sampled"]) == (TRACE_ID, span_id, sampled)

    task_line = wait_for(lambda: json_lines(trace_stack, f"traced task {token}"), message="the task's log line")[0]
    expected_trace = f"projects/{trace_stack.settings.project}/traces/{TRACE_ID}"
    assert task_line["logging.googleapis.com/trace"] == expected_trace
    assert task_line["logging.googleapis.com/spanId"] == span_id
    assert task_line["severity"] == "INFO" and task_line["message"] == f"traced task {token}"
    assert task_line["logging.googleapis.com/labels"]["task_queue"] == "default"
    # The request's own line is in the same trace.
    [request_line] = json_lines(trace_stack, f"deferring {token}")
    assert request_line["logging.googleapis.com/trace"] == expected_trace


def test_malformed_trace_headers_are_ignored(trace_stack):
    token = uuid.uuid4().hex
    response = requests.post(trace_stack.url + "/trace/defer", data={"token": token},
                             headers={"traceparent": "00-not-a-trace-01", "X-Cloud-Trace-Context": "%%%/;o=x"})
    assert response.status_code == 200, response.text
    probe = wait_for(lambda: db.get(db.key("trace_probe", token)), message="the task to run")
    assert probe["trace_id"] is None
    task_line = wait_for(lambda: json_lines(trace_stack, f"traced task {token}"), message="the task's log line")[0]
    assert "logging.googleapis.com/trace" not in task_line and task_line["severity"] == "INFO"
