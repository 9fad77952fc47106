"""HMAC signatures: format, binding to method, path, time and body, age limits, key rotation."""
from __future__ import annotations

from typing import Any

import pytest

from core.tasks.auth.signing import (
    CRON_MAX_AGE,
    SIGNATURE_CLOCK_SKEW,
    SIGNATURE_HEADER,
    TASK_MAX_AGE,
    sign_cron_ping,
    sign_request,
    verify_signature,
)
from core.tasks.errors import ConfigurationError, Forbidden, http_status_for
from tests.core.tasks.auth.support import (
    BODY,
    CRON,
    DEFERRED,
    NOW,
    QUERY_ITER,
    SECRET,
)


def _verify(header: str | None, *, secret: str = SECRET, method: str = "POST", path: str = DEFERRED,
            body: bytes = BODY, max_age: float | None = TASK_MAX_AGE, now: float = NOW) -> None:
    verify_signature(secret, method, path, body, header, max_age=max_age, now=now)


def test_signature_round_trip_and_format() -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    t_part, v1_part = header.split(",")
    assert t_part == f"t={NOW}"
    assert v1_part.startswith("v1=") and len(v1_part) == 3 + 64
    _verify(header)
    # The method is case-insensitive; the signature is deterministic for a given timestamp.
    _verify(header, method="post")
    assert sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW) == header


def test_signature_defaults_to_current_time() -> None:
    verify_signature(SECRET, "POST", DEFERRED, BODY, sign_request(SECRET, "POST", DEFERRED, BODY),
                     max_age=CRON_MAX_AGE)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_signature(header: str | None) -> None:
    with pytest.raises(Forbidden, match="missing X-Tasks-Signature"):
        _verify(header)


GOOD_MAC = "a" * 64


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"v1={GOOD_MAC}",  # no timestamp
        f"t={NOW}",  # no mac
        f"t=abc,v1={GOOD_MAC}",
        f"t=-5,v1={GOOD_MAC}",
        f"t={NOW},t={NOW},v1={GOOD_MAC}",
        f"t={NOW},v1=zz",
        f"t={NOW},v1={GOOD_MAC.upper()}",
        f"t={NOW},v1={GOOD_MAC}0",
        f"t={NOW},v1={GOOD_MAC}," + "x=" * 600,
        "t=1e9,v1=" + GOOD_MAC,
    ],
)
def test_malformed_signature(header: str) -> None:
    with pytest.raises(Forbidden, match="malformed X-Tasks-Signature") as info:
        _verify(header)
    assert http_status_for(info.value) == 403


def test_unknown_signature_fields_are_ignored_but_a_v1_must_match() -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    _verify(header + ",v2=whatever")
    _verify(f"t={NOW},v1={GOOD_MAC},{header.split(',')[1]}")  # any listed v1 may match
    with pytest.raises(Forbidden, match="does not match"):
        _verify(f"t={NOW},v1={GOOD_MAC}")


@pytest.mark.parametrize(
    "change",
    [
        {"secret": "another-secret"},
        {"body": BODY + b" "},
        {"body": b""},
        {"path": QUERY_ITER},
        {"path": DEFERRED + "/"},
        {"method": "GET"},
    ],
    ids=["wrong-secret", "tampered-body", "empty-body", "other-path", "trailing-slash", "other-method"],
)
def test_signature_binds_secret_method_path_and_body(change: dict[str, Any]) -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    with pytest.raises(Forbidden, match="does not match"):
        _verify(header, **change)


def test_signature_binds_timestamp() -> None:
    mac = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW).split(",")[1]
    with pytest.raises(Forbidden, match="does not match"):
        _verify(f"t={NOW + 1},{mac}")


def test_signature_age_limits() -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    _verify(header, max_age=300, now=NOW + 300)
    with pytest.raises(Forbidden, match="too old"):
        _verify(header, max_age=300, now=NOW + 301)
    # Tasks may wait the full 31-day retention of the queue.
    _verify(header, max_age=TASK_MAX_AGE, now=NOW + 31 * 24 * 3600)
    with pytest.raises(Forbidden, match="too old"):
        _verify(header, max_age=TASK_MAX_AGE, now=NOW + 33 * 24 * 3600)
    _verify(header, max_age=None, now=NOW + 10 * 365 * 24 * 3600)


def test_signature_from_the_future() -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    _verify(header, now=NOW - SIGNATURE_CLOCK_SKEW)
    with pytest.raises(Forbidden, match="future"):
        _verify(header, now=NOW - SIGNATURE_CLOCK_SKEW - 1)
    with pytest.raises(Forbidden, match="future"):
        _verify(header, max_age=None, now=NOW - 3600)


def test_rotated_secret() -> None:
    old_header = sign_request("old", "POST", DEFERRED, BODY, timestamp=NOW)
    # After rotation the new key comes first and the old one still verifies queued tasks.
    _verify(old_header, secret="new, old")
    new_header = sign_request("new, old", "POST", DEFERRED, BODY, timestamp=NOW)
    _verify(new_header, secret="new")
    with pytest.raises(Forbidden, match="does not match"):
        _verify(new_header, secret="old")
    with pytest.raises(Forbidden, match="does not match"):
        _verify(old_header, secret="new")


@pytest.mark.parametrize("secret", ["", " , ,"])
def test_empty_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError):
        sign_request(secret, "POST", DEFERRED, BODY)
    with pytest.raises(ConfigurationError):
        _verify(f"t={NOW},v1={GOOD_MAC}", secret=secret)


def test_sign_request_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        sign_request(SECRET, "POST", "_tasks/deferred", BODY)
    with pytest.raises(ValueError):
        sign_request(SECRET, "PO ST", DEFERRED, BODY)
    with pytest.raises(ValueError):
        sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=-1)


def test_unusual_method_is_refused_not_crashing() -> None:
    header = sign_request(SECRET, "POST", DEFERRED, BODY, timestamp=NOW)
    with pytest.raises(Forbidden, match="method"):
        _verify(header, method="PO\nST")


def test_sign_cron_ping() -> None:
    headers = sign_cron_ping(SECRET, CRON, timestamp=NOW)
    assert list(headers) == [SIGNATURE_HEADER]
    verify_signature(SECRET, "GET", CRON, b"", headers[SIGNATURE_HEADER], max_age=CRON_MAX_AGE, now=NOW)
    with pytest.raises(Forbidden):
        verify_signature(SECRET, "GET", "/_tasks/cron/other", b"", headers[SIGNATURE_HEADER],
                         max_age=CRON_MAX_AGE, now=NOW)
