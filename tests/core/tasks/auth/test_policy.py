"""The per-runtime policy: which proofs a task or cron request must carry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.tasks.auth.oidc import OidcVerifier
from core.tasks.auth.policy import RequestVerifier
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.auth.signing import (
    CRON_MAX_AGE,
    SIGNATURE_HEADER,
    sign_cron_ping,
    sign_request,
)
from core.tasks.errors import BadTaskRequest, ConfigurationError, Forbidden, http_status_for
from tests.core.tasks.auth.support import (
    ACCOUNT,
    AUDIENCE,
    BODY,
    CRON,
    DEFERRED,
    NOW,
    QUERY_ITER,
    SECRET,
    Key,
    environ_headers,
)


def _settings(runtime: str, target: str, certs: Path | str = "unused", **changes: Any) -> Settings:
    return Settings(
        runtime=runtime, tasks_target=target, tasks_secret=SECRET, tasks_oidc_certs=str(certs),
        tasks_oidc_audience=AUDIENCE, tasks_service_account=f"{ACCOUNT}, scheduler@proj.iam.gserviceaccount.com",
    ).replace(**changes)


def _signed(path: str = DEFERRED, body: bytes = BODY, method: str = "POST", now: int = NOW) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign_request(SECRET, method, path, body, timestamp=now)}


QUEUE_HEADERS = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "t1",
                 "X-AppEngine-TaskRetryCount": "1"}
HTTP_QUEUE_HEADERS = {"X-CloudTasks-QueueName": "default", "X-CloudTasks-TaskName": "t1",
                      "X-CloudTasks-TaskExecutionCount": "2"}


def test_local_tasks_need_the_signature_only() -> None:
    verifier = RequestVerifier(_settings("local", "appengine"))
    info = verifier.verify_task("POST", DEFERRED, _signed(), BODY, now=NOW)
    assert info == TaskInfo()
    emulator = {"X-AppEngine-QueueName": "projects/p/locations/l/queues/default", **_signed()}
    assert verifier.verify_task("POST", DEFERRED, environ_headers(emulator), BODY, now=NOW).queue == "default"
    with pytest.raises(Forbidden, match="missing X-Tasks-Signature"):
        verifier.verify_task("POST", DEFERRED, QUEUE_HEADERS, BODY, now=NOW)
    with pytest.raises(Forbidden, match="does not match"):
        verifier.verify_task("POST", QUERY_ITER, _signed(), BODY, now=NOW)
    # A task may sit in the queue for its whole retention.
    verifier.verify_task("POST", DEFERRED, _signed(), BODY, now=NOW + 31 * 24 * 3600)
    # An HTTP target configured locally still needs no token.
    RequestVerifier(_settings("local", "http")).verify_task("POST", DEFERRED, _signed(), BODY, now=NOW)


def test_local_cron_needs_a_fresh_signature() -> None:
    verifier = RequestVerifier(_settings("local", "appengine"))
    ping = sign_cron_ping(SECRET, CRON, timestamp=NOW)
    verifier.verify_cron("GET", CRON, ping, b"", now=NOW)
    verifier.verify_cron("GET", CRON, environ_headers(ping), b"", now=NOW + CRON_MAX_AGE)
    with pytest.raises(Forbidden, match="too old"):
        verifier.verify_cron("GET", CRON, ping, b"", now=NOW + CRON_MAX_AGE + 60)
    with pytest.raises(Forbidden, match="missing X-Tasks-Signature"):
        verifier.verify_cron("GET", CRON, {"X-Appengine-Cron": "true"}, b"", now=NOW)
    with pytest.raises(Forbidden, match="does not match"):
        verifier.verify_cron("GET", "/_tasks/cron/other", ping, b"", now=NOW)


def test_appengine_tasks_need_signature_and_queue_headers() -> None:
    verifier = RequestVerifier(_settings("appengine", "appengine"))
    info = verifier.verify_task("POST", DEFERRED, {**QUEUE_HEADERS, **_signed()}, BODY, now=NOW)
    assert info == TaskInfo(queue="default", task_name="t1", retry_count=1, execution_count=1)
    with pytest.raises(Forbidden, match="X-AppEngine-QueueName"):
        verifier.verify_task("POST", DEFERRED, _signed(), BODY, now=NOW)
    with pytest.raises(Forbidden, match="X-AppEngine-TaskName"):
        verifier.verify_task("POST", DEFERRED, {"X-AppEngine-QueueName": "default", **_signed()}, BODY, now=NOW)
    # Cloud Tasks headers are not stripped by App Engine, so they prove nothing here.
    with pytest.raises(Forbidden, match="X-AppEngine-QueueName"):
        verifier.verify_task("POST", DEFERRED, {**HTTP_QUEUE_HEADERS, **_signed()}, BODY, now=NOW)
    with pytest.raises(Forbidden, match="missing X-Tasks-Signature"):
        verifier.verify_task("POST", DEFERRED, QUEUE_HEADERS, BODY, now=NOW)


def test_appengine_cron_needs_the_cron_header() -> None:
    verifier = RequestVerifier(_settings("appengine", "appengine"))
    verifier.verify_cron("GET", CRON, {"X-Appengine-Cron": "true"}, b"", now=NOW)
    verifier.verify_cron("GET", CRON, environ_headers({"X-AppEngine-Cron": "True"}), b"", now=NOW)
    for headers in ({}, {"X-Appengine-Cron": "false"}, sign_cron_ping(SECRET, CRON, timestamp=NOW)):
        with pytest.raises(Forbidden, match="X-Appengine-Cron"):
            verifier.verify_cron("GET", CRON, headers, b"", now=NOW)


@pytest.fixture()
def http_verifier(certs_file: Path) -> RequestVerifier:
    # Built from settings alone: the verifier trusts the certificates file named there.
    return RequestVerifier(_settings("cloudrun", "http", certs_file))


def test_http_tasks_need_signature_and_oidc(http_verifier: RequestVerifier, key: Key, other_key: Key) -> None:
    bearer = {"Authorization": f"Bearer {key.token()}"}
    info = http_verifier.verify_task("POST", DEFERRED, {**HTTP_QUEUE_HEADERS, **bearer, **_signed()}, BODY, now=NOW)
    assert info == TaskInfo(queue="default", task_name="t1", execution_count=2)
    http_verifier.verify_task("POST", DEFERRED, environ_headers({**bearer, **_signed()}), BODY, now=NOW)
    with pytest.raises(Forbidden, match="Authorization"):
        http_verifier.verify_task("POST", DEFERRED, {**HTTP_QUEUE_HEADERS, **_signed()}, BODY, now=NOW)
    with pytest.raises(Forbidden, match="missing X-Tasks-Signature"):
        http_verifier.verify_task("POST", DEFERRED, {**HTTP_QUEUE_HEADERS, **bearer}, BODY, now=NOW)
    with pytest.raises(Forbidden, match="unknown key id"):
        http_verifier.verify_task(
            "POST", DEFERRED, {"Authorization": f"Bearer {other_key.token()}", **_signed()}, BODY, now=NOW
        )
    with pytest.raises(Forbidden, match="expired"):
        http_verifier.verify_task("POST", DEFERRED, {**bearer, **_signed()}, BODY, now=NOW + 7200)


def test_http_cron_needs_oidc(http_verifier: RequestVerifier, key: Key) -> None:
    # A second allowed account, as Cloud Scheduler may use its own.
    token = key.token(email="scheduler@proj.iam.gserviceaccount.com")
    http_verifier.verify_cron("GET", CRON, {"Authorization": f"Bearer {token}"}, b"", now=NOW)
    with pytest.raises(Forbidden, match="Authorization"):
        http_verifier.verify_cron("GET", CRON, {"X-Appengine-Cron": "true"}, b"", now=NOW)
    with pytest.raises(Forbidden, match="Authorization"):
        http_verifier.verify_cron("GET", CRON, sign_cron_ping(SECRET, CRON, timestamp=NOW), b"", now=NOW)
    with pytest.raises(Forbidden, match="audience"):
        http_verifier.verify_cron(
            "GET", CRON, {"Authorization": f"Bearer {key.token(aud='https://else')}"}, b"", now=NOW
        )


def test_appengine_with_http_target(certs_file: Path, key: Key) -> None:
    verifier = RequestVerifier(_settings("appengine", "http", certs_file))
    bearer = {"Authorization": f"Bearer {key.token()}"}
    verifier.verify_task("POST", DEFERRED, {**bearer, **_signed()}, BODY, now=NOW)
    with pytest.raises(Forbidden, match="Authorization"):
        verifier.verify_task("POST", DEFERRED, {**QUEUE_HEADERS, **_signed()}, BODY, now=NOW)
    # App Engine's own cron still works, and so does Cloud Scheduler.
    verifier.verify_cron("GET", CRON, {"X-Appengine-Cron": "true"}, b"", now=NOW)
    verifier.verify_cron("GET", CRON, bearer, b"", now=NOW)
    with pytest.raises(Forbidden):
        verifier.verify_cron("GET", CRON, {}, b"", now=NOW)


def test_injected_oidc_verifier_is_used(certs_file: Path, key: Key) -> None:
    custom = OidcVerifier("https://custom-audience", [ACCOUNT], str(certs_file))
    verifier = RequestVerifier(_settings("cloudrun", "http", "https://unused.example.com"), oidc_verifier=custom)
    assert verifier.oidc_verifier is custom
    token = key.token(aud="https://custom-audience")
    verifier.verify_cron("GET", CRON, {"Authorization": f"Bearer {token}"}, b"", now=NOW)


def test_audience_falls_back_to_target_url(certs_file: Path, key: Key) -> None:
    settings = _settings("cloudrun", "http", certs_file, tasks_oidc_audience=None,
                         tasks_target_url="https://run.example.com")
    verifier = RequestVerifier(settings)
    token = key.token(aud="https://run.example.com")
    verifier.verify_cron("GET", CRON, {"Authorization": f"Bearer {token}"}, b"", now=NOW)


def test_signed_task_with_malformed_queue_headers_is_a_bad_request() -> None:
    verifier = RequestVerifier(_settings("local", "appengine"))
    garbage = {"X-AppEngine-TaskExecutionCount": "-1"}
    with pytest.raises(BadTaskRequest) as info:
        verifier.verify_task("POST", DEFERRED, {**garbage, **_signed()}, BODY, now=NOW)
    assert http_status_for(info.value) == 400
    # Unsigned requests learn nothing about header parsing: they are refused first.
    with pytest.raises(Forbidden):
        verifier.verify_task("POST", DEFERRED, garbage, BODY, now=NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"tasks_secret": ""},
        {"runtime": "mainframe"},
        {"tasks_target": "pubsub"},
        {"runtime": "cloudrun", "tasks_target": "appengine"},
        {"runtime": "cloudrun", "tasks_target": "http", "tasks_oidc_audience": None},
        {"runtime": "appengine", "tasks_target": "http", "tasks_service_account": None},
        {"runtime": "cloudrun", "tasks_target": "http", "tasks_oidc_certs": "http://certs.example.com"},
    ],
)
def test_unverifiable_configuration_fails_at_start_up(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RequestVerifier(_settings("local", "appengine", "https://www.googleapis.com/oauth2/v1/certs").replace(**changes))


def test_building_a_verifier_touches_no_network() -> None:
    # Google's real certificates URL: construction must not fetch it.
    verifier = RequestVerifier(_settings("cloudrun", "http", "https://www.googleapis.com/oauth2/v1/certs"))
    assert verifier.oidc_verifier is not None and verifier.oidc_verifier.certificate_loads == 0


def test_prepared_keys_verify_every_rotated_secret() -> None:
    # The verifier prepares its keys once; each of them must still verify queued tasks.
    verifier = RequestVerifier(_settings("local", "appengine", tasks_secret="new, " + SECRET))
    verifier.verify_task("POST", DEFERRED, _signed(), BODY, now=NOW)
    new = {SIGNATURE_HEADER: sign_request("new", "POST", DEFERRED, BODY, timestamp=NOW)}
    verifier.verify_task("POST", DEFERRED, new, BODY, now=NOW)
    with pytest.raises(Forbidden, match="does not match"):
        RequestVerifier(_settings("local", "appengine", tasks_secret="new")).verify_task(
            "POST", DEFERRED, _signed(), BODY, now=NOW)
