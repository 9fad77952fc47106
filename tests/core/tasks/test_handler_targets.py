"""The handler's verification per deployment target, through the real /_tasks/deferred route."""
from __future__ import annotations

import json
import time

import pytest

from core.tasks import callDeferred
from tests.core.tasks.auth.support import ACCOUNT, AUDIENCE, Key

RUNS: list[str] = []


@callDeferred
def target_probe(value: str) -> None:
    RUNS.append(value)


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def _queued(make_app, settings):
    app = make_app({}, settings=settings)
    target_probe("ran")
    from core.app import runtime_of

    request = runtime_of(app).transport.pending.pop(0).request
    return app.test_client(), request


def test_cloud_run_needs_a_valid_oidc_token(make_app, settings, tmp_path):
    key = Key("run-key")
    certs = tmp_path / "certs.json"
    certs.write_text(json.dumps({key.kid: key.cert_pem}))
    cloud_run = settings.replace(runtime="cloudrun", tasks_target="http", tasks_target_url=AUDIENCE,
                                 tasks_service_account=ACCOUNT, tasks_oidc_certs=str(certs))
    client, request = _queued(make_app, cloud_run)
    now = time.time()

    def post(headers):
        return client.post(request.path, data=request.body, headers={**request.headers, **headers})

    assert post({}).status_code == 403                                                   # signature alone
    assert post({"Authorization": "Bearer " + key.token(now, aud="https://other")}).status_code == 403
    assert post({"Authorization": "Bearer " + key.token(now, email="evil@x.iam")}).status_code == 403
    assert post({"Authorization": "Bearer " + Key("stranger").token(now)}).status_code == 403
    assert post({"Authorization": "Bearer garbage"}).status_code == 403
    assert RUNS == []
    assert post({"Authorization": "Bearer " + key.token(now),
                 "X-CloudTasks-TaskExecutionCount": "0"}).status_code == 200
    assert RUNS == ["ran"]


def test_app_engine_needs_its_queue_headers(make_app, settings):
    client, request = _queued(make_app, settings.replace(runtime="appengine", tasks_target="appengine"))
    assert client.post(request.path, data=request.body, headers=dict(request.headers)).status_code == 403
    assert client.post(request.path, data=request.body, headers={
        "X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "1"}).status_code == 403  # unsigned
    assert RUNS == []
    response = client.post(request.path, data=request.body, headers={
        **request.headers, "X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "1"})
    assert response.status_code == 200 and RUNS == ["ran"]
