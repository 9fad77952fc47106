"""The one recipe for outgoing task requests: what it builds is what the verifier accepts."""
from __future__ import annotations

import datetime
import uuid

import pytest

from core.config import Settings
from core.tasks import message, wire
from core.tasks.auth.policy import RequestVerifier
from core.tasks.auth.signing import SIGNATURE_HEADER
from core.tasks.errors import Forbidden
from core.tasks.runtime import TaskRuntime

SECRET = "wire-secret"


@pytest.fixture()
def runtime() -> TaskRuntime:
    return TaskRuntime(Settings(runtime="local", tasks_target="appengine", tasks_secret=SECRET))


def test_built_request_is_addressed_encoded_and_verifies(runtime: TaskRuntime) -> None:
    envelope = message.Envelope(kind="deferred", payload={"target": "mod.fn", "args": [1], "kwargs": {}},
                                queue="mail-out", env={})
    eta = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    request = wire.build_request(runtime, envelope, "/_tasks/deferred", name="n-1", eta=eta,
                                 target_version="v2", dispatch_deadline=datetime.timedelta(seconds=30))
    assert (request.queue, request.path, request.method) == ("mail-out", "/_tasks/deferred", "POST")
    assert (request.name, request.eta, request.target_version) == ("n-1", eta, "v2")
    assert request.dispatch_deadline == datetime.timedelta(seconds=30)
    assert request.headers["Content-Type"] == "application/json"
    assert message.decode(request.body).payload == envelope.payload
    runtime.verifier.verify_task("POST", request.path, request.headers, request.body)


def test_signed_request_binds_path_and_body(runtime: TaskRuntime) -> None:
    request = wire.signed_request(runtime, "default", "/_tasks/queryIter", b'{"stored": "body"}')
    assert request.body == b'{"stored": "body"}' and SIGNATURE_HEADER in request.headers
    runtime.verifier.verify_task("POST", "/_tasks/queryIter", request.headers, request.body)
    with pytest.raises(Forbidden, match="does not match"):
        runtime.verifier.verify_task("POST", "/_tasks/deferred", request.headers, request.body)
    with pytest.raises(Forbidden, match="does not match"):
        runtime.verifier.verify_task("POST", request.path, request.headers, request.body + b" ")


def test_each_envelope_gets_its_own_version_4_uuid_as_its_id() -> None:
    ids = [message.Envelope(kind="deferred", payload={}, queue="default").id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(hex=task_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (task_id, 4, uuid.RFC_4122)


def test_a_new_secret_in_the_settings_signs_what_is_sent_next(runtime: TaskRuntime) -> None:
    wire.signed_request(runtime, "default", "/_tasks/deferred", b"{}")  # the first secret's keys are made
    runtime.settings = runtime.settings.replace(tasks_secret="rotated-secret")
    request = wire.signed_request(runtime, "default", "/_tasks/deferred", b"{}")
    RequestVerifier(runtime.settings).verify_task("POST", request.path, request.headers, request.body)
    with pytest.raises(Forbidden, match="does not match"):
        RequestVerifier(runtime.settings.replace(tasks_secret=SECRET)).verify_task(
            "POST", request.path, request.headers, request.body)
