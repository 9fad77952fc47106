"""Deferred calls through gunicorn and the durable local queue, on the Datastore emulator."""
from __future__ import annotations

import signal
import time
import uuid

import requests

from core import db
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from core.testing import on_every_server
from example.users import create_user
from tests.e2e.conftest import probe_runs, sign_in, wait_for


@on_every_server
def test_deferred_call_over_http_runs_with_user_and_language(live_stack):
    create_user("ada", "s3cret-pass", admin=False)
    session = requests.Session()
    sign_in(session, live_stack.url, "ada", "s3cret-pass")
    response = session.post(live_stack.url + "/invoices/close_month", data={"month": "2026-10"},
                            headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert response.status_code == 200 and response.json()["month"] == "2026-10"
    total = wait_for(lambda: db.get(db.key("invoice_total", "2026-10")), message="the deferred task to run")
    assert total["computed_by"] == "ada" and total["language"] == "de" and total["module"] == "invoices"


def test_anonymous_call_runs_without_a_user(live_stack):
    requests.get(live_stack.url + "/invoices/close_month?month=2026-11").raise_for_status()
    total = wait_for(lambda: db.get(db.key("invoice_total", "2026-11")))
    assert total["computed_by"] is None and total["language"] == "en"


@on_every_server
def test_flaky_task_is_retried_until_it_succeeds(probe_stack):
    token = uuid.uuid4().hex
    requests.post(probe_stack.url + "/probes/flaky", data={"token": token, "failures": "2"}).raise_for_status()
    wait_for(lambda: len(probe_runs(token)) >= 3, message="three runs")
    time.sleep(1.0)  # a fourth run would come within the backoff seen so far
    assert len(probe_runs(token)) == 3


@on_every_server
def test_permanent_failure_runs_once_and_leaves_a_dead_letter(probe_stack):
    token = uuid.uuid4().hex
    requests.post(probe_stack.url + "/probes/permanent", data={"token": token}).raise_for_status()
    letters = wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), message="a dead letter")
    time.sleep(0.5)
    assert len(probe_runs(token)) == 1
    assert "never works" in letters[0]["error"] and letters[0]["attempts"] == 1


def test_dispatcher_killed_mid_run_loses_no_task(probe_stack):
    token = uuid.uuid4().hex
    requests.post(probe_stack.url + "/probes/slow",
                  data={"token": token, "count": "40", "seconds": "0.3"}).raise_for_status()
    wait_for(lambda: len(probe_runs(token)) >= 3, message="some tasks to start")
    probe_stack.stop_dispatcher(signal.SIGKILL)
    done_at_kill = len(probe_runs(token))
    assert done_at_kill < 40, "the kill must happen mid-run"
    probe_stack.start_dispatcher()
    wait_for(lambda: len(probe_runs(token)) >= 40, timeout=90, message="all 40 tasks")


@on_every_server
def test_forged_and_garbage_requests_get_4xx_and_run_nothing(probe_stack):
    token = uuid.uuid4().hex
    url = probe_stack.url + "/_tasks/deferred"
    body = (b'{"v":1,"id":"x","kind":"deferred","queue":"default","created":0,"env":{},'
            b'"payload":{"target":"tests.e2e.app.permanent","instance":null,"args":["' + token.encode() +
            b'"],"kwargs":{}}}')
    attempts = [
        ({}, body),                                                                     # unsigned
        ({SIGNATURE_HEADER: sign_request("wrong-secret", "POST", "/_tasks/deferred", body)}, body),
        ({SIGNATURE_HEADER: "t=1,v1=00"}, body),                                        # malformed
        ({SIGNATURE_HEADER: sign_request(probe_stack.settings.tasks_secret, "POST", "/_tasks/deferred", body)},
         body.replace(b"permanent", b"slow")),                                          # tampered
        ({"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "x"}, body),      # App Engine headers alone
        ({"Content-Type": "application/json"}, b"\xff\xfe garbage"),
    ]
    for headers, data in attempts:
        response = requests.post(url, data=data, headers=headers)
        assert 400 <= response.status_code < 500, (headers, response.status_code)
    time.sleep(0.5)
    assert probe_runs(token) == []
    assert db.Query(DEAD_LETTER_KIND).run() == []
