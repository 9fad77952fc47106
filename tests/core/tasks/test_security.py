"""Request verification: HMAC signatures, queue headers, OIDC tokens and the per-runtime policy."""
from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google.auth.crypt
import google.auth.jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from werkzeug.datastructures import EnvironHeaders

from core.config import Settings
from core.tasks.errors import BadTaskRequest, ConfigurationError, Forbidden, http_status_for
from core.tasks.security import (
    CERTS_MIN_REFRESH,
    CRON_MAX_AGE,
    SIGNATURE_CLOCK_SKEW,
    SIGNATURE_HEADER,
    TASK_MAX_AGE,
    OidcVerifier,
    RequestVerifier,
    TaskInfo,
    sign_cron_ping,
    sign_request,
    task_info,
    verify_signature,
)

# A fixed clock far from the real one, so nothing here depends on when the tests run.
NOW = 1_700_000_000
SECRET = "s3cret-key"
DEFERRED = "/_tasks/deferred"
QUERY_ITER = "/_tasks/queryIter"
CRON = "/_tasks/cron/default"
BODY = b'{"task": "mod.fn", "args": [1, 2]}'

AUDIENCE = "https://app.example.com"
ACCOUNT = "tasks@proj.iam.gserviceaccount.com"
KID = "key-1"


# --- HMAC signatures -----------------------------------------------------------------------------

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


# --- queue headers --------------------------------------------------------------------------------

def _environ_headers(headers: dict[str, str]) -> EnvironHeaders:
    environ = {"HTTP_" + key.upper().replace("-", "_"): value for key, value in headers.items()}
    return EnvironHeaders(environ)


APPENGINE_HEADERS = {
    "X-AppEngine-QueueName": "default",
    "X-AppEngine-TaskName": "task-123",
    "X-AppEngine-TaskRetryCount": "4",
    "X-AppEngine-TaskExecutionCount": "3",
    "X-AppEngine-TaskETA": "1700000000.250000",
    "X-AppEngine-TaskPreviousResponse": "500",
    "X-AppEngine-TaskRetryReason": "App Engine returned 500",
}
EXPECTED_INFO = TaskInfo(
    queue="default", task_name="task-123", retry_count=4, execution_count=3,
    eta=1_700_000_000.25, previous_response=500, retry_reason="App Engine returned 500",
)


@pytest.mark.parametrize(
    "make",
    [
        dict,
        lambda h: {k.lower(): v for k, v in h.items()},
        lambda h: {k.upper(): v for k, v in h.items()},
        _environ_headers,
    ],
    ids=["dict", "lower", "upper", "werkzeug"],
)
def test_task_info_from_appengine_headers(make: Callable[[dict[str, str]], Any]) -> None:
    info = task_info(make(APPENGINE_HEADERS))
    assert info == EXPECTED_INFO
    assert info.eta_datetime == datetime.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=datetime.UTC)


def test_task_info_from_cloudtasks_headers() -> None:
    headers = {key.replace("X-AppEngine-", "X-CloudTasks-"): value for key, value in APPENGINE_HEADERS.items()}
    assert task_info(headers) == EXPECTED_INFO


def test_task_info_from_the_emulator() -> None:
    # What gcloud-tasks-emulator sends: full queue path, counts, an empty ETA.
    info = task_info({
        "X-Appengine-Queuename": "projects/local-project/locations/europe-west1/queues/mail-out",
        "X-Appengine-Taskname": "1234567890",
        "X-Appengine-Taskretrycount": "0",
        "X-Appengine-Taskexecutioncount": "0",
        "X-Appengine-Tasketa": "",
    })
    assert info == TaskInfo(queue="mail-out", task_name="1234567890")
    assert info.eta is None and info.eta_datetime is None
    full_task = task_info({"X-CloudTasks-TaskName": "projects/p/locations/l/queues/q/tasks/abc"})
    assert full_task.task_name == "abc"


def test_task_info_without_headers() -> None:
    info = task_info({})
    assert info == TaskInfo()
    assert (info.queue, info.retry_count, info.execution_count) == (None, 0, 0)


def test_missing_execution_count_derives_from_retry_count() -> None:
    assert task_info({"X-AppEngine-TaskRetryCount": "7"}).execution_count == 7
    assert task_info({"X-CloudTasks-TaskRetryCount": "2"}).execution_count == 2
    assert task_info({"X-AppEngine-TaskExecutionCount": "1"}).retry_count == 0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-AppEngine-TaskRetryCount", "-1"),
        ("X-AppEngine-TaskExecutionCount", "-1"),
        ("X-AppEngine-TaskExecutionCount", "three"),
        ("X-CloudTasks-TaskExecutionCount", "1.5"),
        ("X-AppEngine-TaskRetryCount", "9" * 5000),
        ("X-AppEngine-TaskETA", "tomorrow"),
        ("X-AppEngine-TaskETA", "nan"),
        ("X-AppEngine-TaskETA", "-5"),
        ("X-AppEngine-TaskPreviousResponse", "5xx"),
    ],
)
def test_malformed_queue_numbers(header: str, value: str) -> None:
    with pytest.raises(BadTaskRequest, match=header) as info:
        task_info({header: value})
    assert http_status_for(info.value) == 400


# --- OIDC -----------------------------------------------------------------------------------------

class Key:
    """An RSA key with a self-signed certificate, as Google publishes them."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(self.private, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        private_pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = google.auth.crypt.RSASigner.from_string(private_pem, key_id=kid)

    def token(self, now: float = NOW, *, kid: str | None = None, **overrides: Any) -> str:
        """A token valid at ``now``; ``kid`` signs with this key under another key id."""
        claims: dict[str, Any] = {
            "aud": AUDIENCE,
            "iss": "https://accounts.google.com",
            "email": ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            "iat": int(now) - 10,
            "exp": int(now) + 3590,
        }
        claims.update(overrides)
        for name in [k for k, v in claims.items() if v is None]:
            del claims[name]
        signer = self.signer if kid is None else google.auth.crypt.RSASigner(self.private, key_id=kid)
        return google.auth.jwt.encode(signer, claims).decode()


@pytest.fixture(scope="module")
def key() -> Key:
    return Key(KID)


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key("key-2")


def _write_certs(path: Path, *keys: Key) -> Path:
    path.write_text(json.dumps({k.kid: k.cert_pem for k in keys}))
    return path


@pytest.fixture()
def certs_file(tmp_path: Path, key: Key) -> Path:
    return _write_certs(tmp_path / "certs.json", key)


@pytest.fixture()
def oidc(certs_file: Path) -> OidcVerifier:
    return OidcVerifier(AUDIENCE, [ACCOUNT], str(certs_file))


def test_oidc_good_token(oidc: OidcVerifier, key: Key) -> None:
    claims = oidc.verify(f"Bearer {key.token()}", now=NOW)
    assert claims["email"] == ACCOUNT and claims["aud"] == AUDIENCE
    # Either spelling of Google's issuer, any case of the scheme and of the account address.
    oidc.verify(f"bearer {key.token(iss='accounts.google.com')}", now=NOW)
    oidc.verify(f"Bearer {key.token(email=ACCOUNT.upper())}", now=NOW)
    # Clock skew on both ends.
    oidc.verify(f"Bearer {key.token()}", now=NOW + 3590 + 59)
    oidc.verify(f"Bearer {key.token()}", now=NOW - 10 - 59)


def test_oidc_on_the_real_clock(oidc: OidcVerifier, key: Key) -> None:
    import time

    oidc.verify(f"Bearer {key.token(now=time.time())}")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": NOW - 100, "iat": NOW - 3700}, "expired"),
        ({"iat": NOW + 600, "exp": NOW + 4200}, "future"),
        ({"aud": "https://other.example.com"}, "audience"),
        ({"aud": [AUDIENCE]}, "audience"),
        ({"aud": None}, "audience"),
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"email": "someone@proj.iam.gserviceaccount.com"}, "service account"),
        ({"email": None}, "service account"),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": None}, "not verified"),
        ({"iat": "yesterday"}, "iat/exp"),
        ({"exp": None}, "iat/exp"),
    ],
    ids=["expired", "future", "wrong-audience", "audience-list", "no-audience", "wrong-issuer",
         "no-issuer", "wrong-email", "no-email", "unverified-email", "no-email-verified",
         "string-iat", "no-exp"],
)
def test_oidc_rejected_claims(oidc: OidcVerifier, key: Key, overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(Forbidden, match=reason) as info:
        oidc.verify(f"Bearer {key.token(**overrides)}", now=NOW)
    assert http_status_for(info.value) == 403


def test_oidc_rejects_token_signed_by_another_key(oidc: OidcVerifier, other_key: Key) -> None:
    # Same key id as the trusted key, different private key.
    with pytest.raises(Forbidden, match="signature does not verify"):
        oidc.verify(f"Bearer {other_key.token(kid=KID)}", now=NOW)
    with pytest.raises(Forbidden, match="unknown key id"):
        oidc.verify(f"Bearer {other_key.token()}", now=NOW)


def test_oidc_rejects_tampered_payload(oidc: OidcVerifier, key: Key) -> None:
    header, _, signature = key.token().split(".")
    _, payload, _ = key.token(email="attacker@example.com").split(".")
    with pytest.raises(Forbidden, match="signature does not verify"):
        oidc.verify(f"Bearer {header}.{payload}.{signature}", now=NOW)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ....",
        "Bearer a b c",
        "Bearer " + "x" * 20_000,
        "Bearer " + _b64({"alg": "RS256"}) + "." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".sig",
        "Bearer " + _b64({"alg": "RS256"}) + "." + _b64(["not", "an", "object"]) + ".sig",  # type: ignore[arg-type]
        "Bearer " + _b64({"alg": "RS256", "kid": ["list"]}) + "." + _b64({"iat": NOW, "exp": NOW + 60}) + ".sig",
        "Bearer " + _b64({"alg": "RS256", "kid": KID}) + "." + _b64({"iat": NOW, "exp": NOW + 60}) + ".!!!",
        "Bearer " + _b64({"alg": "none"}) + "." + _b64({"iat": NOW, "exp": NOW + 60}) + ".",
        "Bearer " + _b64({"alg": "HS256"}) + "." + _b64({"iat": NOW, "exp": NOW + 60}) + ".c2ln",
    ],
)
def test_oidc_garbage_is_forbidden(oidc: OidcVerifier, authorization: str | None) -> None:
    with pytest.raises(Forbidden):
        oidc.verify(authorization, now=NOW)


def test_oidc_accepts_only_rs256(tmp_path: Path, key: Key) -> None:
    # An ES256 token from a key the file trusts is still refused: Google signs with RS256.
    ec_private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ec_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ec_private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
        .sign(ec_private, hashes.SHA256())
    )
    path = tmp_path / "certs.json"
    path.write_text(json.dumps({"ec": ec_cert.public_bytes(serialization.Encoding.PEM).decode(), KID: key.cert_pem}))
    ec_pem = ec_private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    claims = {"aud": AUDIENCE, "iss": "accounts.google.com", "email": ACCOUNT, "email_verified": True,
              "iat": NOW - 10, "exp": NOW + 600}
    token = google.auth.jwt.encode(google.auth.crypt.ES256Signer.from_string(ec_pem, key_id="ec"), claims).decode()
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], str(path))
    with pytest.raises(Forbidden, match="not RS256"):
        verifier.verify(f"Bearer {token}", now=NOW)
    verifier.verify(f"Bearer {key.token()}", now=NOW)


@pytest.mark.parametrize("alg", ["none", "HS256", None])
def test_oidc_refuses_other_algorithms(oidc: OidcVerifier, alg: str | None) -> None:
    header = {"typ": "JWT", "kid": KID} | ({"alg": alg} if alg else {})
    token = _b64(header) + "." + _b64({"iat": NOW, "exp": NOW + 60, "aud": AUDIENCE}) + ".c2ln"
    with pytest.raises(Forbidden, match="not RS256"):
        oidc.verify(f"Bearer {token}", now=NOW)


@pytest.mark.parametrize("scheme", ["Basic", "Token", ""])
def test_oidc_requires_bearer_scheme(oidc: OidcVerifier, key: Key, scheme: str) -> None:
    with pytest.raises(Forbidden, match="Bearer|malformed"):
        oidc.verify(f"{scheme} {key.token()}".strip(), now=NOW)


def test_oidc_certificates_from_a_pem_file(tmp_path: Path, key: Key, other_key: Key) -> None:
    pem = tmp_path / "certs.pem"
    pem.write_text(other_key.cert_pem + "\n" + key.cert_pem)
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], str(pem))
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    verifier.verify(f"Bearer {other_key.token()}", now=NOW)
    pem.write_text(other_key.cert_pem)
    only_other = OidcVerifier(AUDIENCE, [ACCOUNT], str(pem))
    with pytest.raises(Forbidden, match="signature does not verify"):
        only_other.verify(f"Bearer {key.token()}", now=NOW)


@pytest.mark.parametrize(
    "content", ["", "not a certificate", "{", '{"kid": 5}', "{}", "[]"], ids=repr
)
def test_oidc_bad_certificates_file(tmp_path: Path, key: Key, content: str) -> None:
    path = tmp_path / "certs"
    path.write_text(content)
    with pytest.raises(Forbidden, match="certificates"):
        OidcVerifier(AUDIENCE, [ACCOUNT], str(path)).verify(f"Bearer {key.token()}", now=NOW)
    with pytest.raises(Forbidden, match="certificates"):
        OidcVerifier(AUDIENCE, [ACCOUNT], str(tmp_path / "missing")).verify(f"Bearer {key.token()}", now=NOW)


def test_oidc_configuration_errors(certs_file: Path) -> None:
    with pytest.raises(ConfigurationError):
        OidcVerifier("", [ACCOUNT], str(certs_file))
    with pytest.raises(ConfigurationError):
        OidcVerifier(AUDIENCE, ["", " "], str(certs_file))
    with pytest.raises(ConfigurationError):
        OidcVerifier(AUDIENCE, [ACCOUNT], "")
    with pytest.raises(ConfigurationError, match="https"):
        OidcVerifier(AUDIENCE, [ACCOUNT], "http://certs.example.com/certs")


class CertsServer:
    """A real HTTP server on a free loopback port that serves a certificates document."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.status = 200
        self.cache_control: str | None = None
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                if outer.cache_control:
                    self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v1/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, *keys: Key) -> None:
        self.body = json.dumps({k.kid: k.cert_pem for k in keys}).encode()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture()
def certs_server() -> Iterator[CertsServer]:
    server = CertsServer()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def test_oidc_certificates_from_a_url_are_fetched_lazily_and_cached(
    certs_server: CertsServer, key: Key
) -> None:
    certs_server.serve(key)
    clock = FakeClock()
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], certs_server.url, cache_ttl=600, clock=clock)
    assert certs_server.hits == 0 and verifier.certificate_loads == 0
    for _ in range(3):
        verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 1
    clock.value += 599
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 1
    clock.value += 1
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 2


def test_oidc_url_cache_follows_cache_control(certs_server: CertsServer, key: Key) -> None:
    certs_server.serve(key)
    certs_server.cache_control = "public, max-age=20000, must-revalidate"
    clock = FakeClock()
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], certs_server.url, cache_ttl=600, clock=clock)
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    clock.value += 19_999
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 1
    clock.value += 1
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 2


def test_oidc_new_key_id_refreshes_once_in_a_while(
    certs_server: CertsServer, key: Key, other_key: Key
) -> None:
    certs_server.serve(key)
    clock = FakeClock()
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], certs_server.url, cache_ttl=3600, clock=clock)
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    # Google rotates: a token with a new key id arrives before the cache expires.
    certs_server.serve(key, other_key)
    clock.value += CERTS_MIN_REFRESH
    verifier.verify(f"Bearer {other_key.token()}", now=NOW)
    assert certs_server.hits == 2
    # Tokens with made-up key ids do not make us download again and again.
    for _ in range(3):
        with pytest.raises(Forbidden, match="unknown key id"):
            verifier.verify(f"Bearer {other_key.token(kid='made-up')}", now=NOW)
    assert certs_server.hits == 2


def test_oidc_keeps_old_certificates_when_a_refresh_fails(certs_server: CertsServer, key: Key) -> None:
    certs_server.serve(key)
    clock = FakeClock()
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], certs_server.url, cache_ttl=600, clock=clock)
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    certs_server.status = 503
    clock.value += 600
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 2
    verifier.verify(f"Bearer {key.token()}", now=NOW)
    assert certs_server.hits == 2  # the failure is not retried on every request


def test_oidc_unreachable_certificates_are_forbidden(certs_server: CertsServer, key: Key) -> None:
    certs_server.status = 500
    verifier = OidcVerifier(AUDIENCE, [ACCOUNT], certs_server.url)
    with pytest.raises(Forbidden, match="HTTP 500"):
        verifier.verify(f"Bearer {key.token()}", now=NOW)
    url = certs_server.url
    certs_server.stop()
    closed = OidcVerifier(AUDIENCE, [ACCOUNT], url)
    with pytest.raises(Forbidden, match="cannot fetch"):
        closed.verify(f"Bearer {key.token()}", now=NOW)


# --- policy ---------------------------------------------------------------------------------------

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
    assert verifier.verify_task("POST", DEFERRED, _environ_headers(emulator), BODY, now=NOW).queue == "default"
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
    verifier.verify_cron("GET", CRON, _environ_headers(ping), b"", now=NOW + CRON_MAX_AGE)
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
    verifier.verify_cron("GET", CRON, _environ_headers({"X-AppEngine-Cron": "True"}), b"", now=NOW)
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
    http_verifier.verify_task("POST", DEFERRED, _environ_headers({**bearer, **_signed()}), BODY, now=NOW)
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
