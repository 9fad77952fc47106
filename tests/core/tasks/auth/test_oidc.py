"""OIDC tokens: claims, signatures, algorithms, certificate files and a certificates URL with its cache."""
from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any

import google.auth.crypt
import google.auth.jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.tasks.auth.certs import CERTS_MIN_REFRESH
from core.tasks.auth.oidc import OidcVerifier
from core.tasks.errors import ConfigurationError, Forbidden, http_status_for
from tests.core.tasks.auth.support import (
    ACCOUNT,
    AUDIENCE,
    KID,
    NOW,
    CertsServer,
    FakeClock,
    Key,
)


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

    oidc.verify(f"Bearer {key.token(now=time.time())}")


def test_oidc_time_window_on_the_real_clock(oidc: OidcVerifier, key: Key) -> None:
    # Without ``now`` the library judges the window against the real clock; the refusal names why.
    wall = time.time()
    with pytest.raises(Forbidden, match="expired"):
        oidc.verify(f"Bearer {key.token(now=wall - 7200)}")
    with pytest.raises(Forbidden, match="future"):
        oidc.verify(f"Bearer {key.token(now=wall + 600)}")
    oidc.verify(f"Bearer {key.token(now=wall - 3590 - 50)}")  # expired 50 s ago: within the skew
    with pytest.raises(Forbidden, match="audience"):
        oidc.verify(f"Bearer {key.token(now=wall, aud='https://other.example.com')}")


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
