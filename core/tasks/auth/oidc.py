"""Verification of the OIDC bearer tokens Google attaches to Cloud Tasks HTTP targets and Cloud Scheduler jobs."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from core.tasks.errors import ConfigurationError, Forbidden

logger = logging.getLogger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
#: Tolerated clock difference for ``iat`` / ``exp``.
OIDC_CLOCK_SKEW: float = 60.0
#: How long downloaded certificates are kept when the server does not say (Cache-Control).
CERTS_DEFAULT_TTL: float = 3600.0
#: An unknown key id triggers a refresh at most this often, so garbage tokens cannot hammer Google.
CERTS_MIN_REFRESH: float = 60.0
_CERTS_TTL_BOUNDS = (60.0, 24 * 3600.0)
_CERTS_FETCH_TIMEOUT = 10.0
_MAX_TOKEN_LENGTH = 16_384
_PEM_BLOCK_RE = re.compile(
    r"-----BEGIN (CERTIFICATE|PUBLIC KEY)-----[A-Za-z0-9+/=\s]+-----END \1-----"
)
_MAX_AGE_RE = re.compile(r"max-age\s*=\s*([0-9]+)", re.IGNORECASE)

#: kid → PEM (Google's format and JSON files), or PEM blocks without key ids (PEM files).
Certs = Mapping[str, str] | list[str]


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_certs(text: str, origin: str) -> Certs:
    """Certificates from Google's JSON (``{kid: pem}``) or from PEM text."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise Forbidden(f"OIDC certificates from {origin} are not valid JSON") from exc
        if (
            not isinstance(data, dict)
            or not data
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
        ):
            raise Forbidden(f"OIDC certificates from {origin} are not a {{key id: PEM}} object")
        return dict(data)
    blocks = [match.group(0) for match in _PEM_BLOCK_RE.finditer(stripped)]
    if not blocks:
        raise Forbidden(f"OIDC certificates from {origin} contain no PEM certificate")
    return blocks


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _CertCache:
    """Google's public certificates, loaded on first use and kept for a while.

    ``source`` is an https URL (plain http only on loopback, for tests) or a file path. A failed
    refresh keeps serving the last good certificates.
    """

    def __init__(self, source: str, *, ttl: float, clock: Callable[[], float]) -> None:
        self.source = source
        self._ttl = ttl
        self._clock = clock
        parsed = urllib.parse.urlsplit(source)
        self._is_url = parsed.scheme in {"http", "https"}
        if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
            raise ConfigurationError(f"OIDC certificates must be fetched over https: {source}")
        self._lock = threading.Lock()
        self._certs: Certs | None = None
        self._loaded_at = -math.inf
        self._expires_at = -math.inf
        self._request: Any = None
        #: How many times the source was read (for monitoring and tests).
        self.loads = 0

    def get(self, *, refresh_for_unknown_key: bool = False) -> Certs:
        with self._lock:
            now = self._clock()
            stale = self._certs is None or now >= self._expires_at
            wanted = refresh_for_unknown_key and now - self._loaded_at >= CERTS_MIN_REFRESH
            if stale or wanted:
                try:
                    self._certs, ttl = self._load()
                    self._loaded_at = now
                    self._expires_at = now + ttl
                except Forbidden as exc:
                    if self._certs is None:
                        logger.error("cannot load OIDC certificates from %s: %s", self.source, exc)
                        raise
                    logger.exception("refreshing OIDC certificates failed; keeping the old ones")
                    # Do not retry on every request while the source is down.
                    self._loaded_at = now
                    self._expires_at = now + CERTS_MIN_REFRESH
            assert self._certs is not None
            return self._certs

    def _load(self) -> tuple[Certs, float]:
        self.loads += 1
        if not self._is_url:
            try:
                text = Path(self.source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise Forbidden(f"cannot read OIDC certificates file: {exc}") from exc
            return _parse_certs(text, "the certificates file"), self._ttl
        return self._fetch()

    def _fetch(self) -> tuple[Certs, float]:
        if self._request is None:
            import google.auth.transport.requests

            self._request = google.auth.transport.requests.Request()
        try:
            response = self._request(self.source, method="GET", timeout=_CERTS_FETCH_TIMEOUT)
        except Exception as exc:  # any transport failure means "cannot verify", never a 5xx
            raise Forbidden(f"cannot fetch OIDC certificates: {type(exc).__name__}") from exc
        if response.status != 200:
            raise Forbidden(f"cannot fetch OIDC certificates: HTTP {response.status}")
        try:
            text = response.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Forbidden("OIDC certificates response is not UTF-8") from exc
        ttl = self._ttl
        match = _MAX_AGE_RE.search(response.headers.get("Cache-Control", "") or "")
        if match:
            low, high = _CERTS_TTL_BOUNDS
            ttl = min(max(float(match.group(1)), low), high)
        return _parse_certs(text, "the certificates URL"), ttl


class OidcVerifier:
    """Verifies Google-signed OIDC tokens from Cloud Tasks HTTP targets and Cloud Scheduler.

    ``certs`` is Google's certificates URL (fetched lazily, cached) or a path to a PEM or
    ``{kid: PEM}`` JSON file. A token passes when it is RS256-signed by one of those
    certificates, is current, is meant for ``audience``, comes from Google and names one of
    ``service_accounts`` with a verified email.
    """

    def __init__(
        self,
        audience: str,
        service_accounts: Collection[str],
        certs: str,
        *,
        clock_skew: float = OIDC_CLOCK_SKEW,
        cache_ttl: float = CERTS_DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not audience:
            raise ConfigurationError("OIDC verification needs an audience (TASKS_OIDC_AUDIENCE)")
        accounts = frozenset(a.strip().lower() for a in service_accounts if a and a.strip())
        if not accounts:
            raise ConfigurationError(
                "OIDC verification needs the service account(s) that sign tokens "
                "(TASKS_SERVICE_ACCOUNT)"
            )
        if not certs:
            raise ConfigurationError("OIDC verification needs a certificates URL or file")
        self.audience = audience
        self.service_accounts = accounts
        self.clock_skew = clock_skew
        self._certs = _CertCache(certs, ttl=cache_ttl, clock=clock)

    @property
    def certificate_loads(self) -> int:
        """How often the certificates were (re)loaded."""
        return self._certs.loads

    def verify(self, authorization_header: str | None, *, now: float | None = None) -> dict[str, Any]:
        """The token's claims if ``Authorization: Bearer <token>`` is valid, else :class:`Forbidden`."""
        token = self._bearer_token(authorization_header)
        header, payload = self._unverified_parts(token)
        certs = self._certs_for(header.get("kid"))
        current = time.time() if now is None else now
        self._check_signature(token, certs, payload)
        self._check_claims(payload, current)
        return dict(payload)

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if authorization_header is None or not authorization_header.strip():
            raise Forbidden("missing Authorization header (expected an OIDC bearer token)")
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Forbidden("Authorization header does not use the Bearer scheme")
        token = token.strip()
        if not token or len(token) > _MAX_TOKEN_LENGTH or " " in token:
            raise Forbidden("malformed bearer token")
        return token

    @staticmethod
    def _unverified_parts(token: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Header and payload, read before any trust, only to pick the key and reject early."""
        segments = token.split(".")
        if len(segments) != 3:
            raise Forbidden("malformed bearer token: not a JWT")
        try:
            header = _b64url_json(segments[0])
            payload = _b64url_json(segments[1])
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise Forbidden("malformed bearer token: undecodable segment") from exc
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise Forbidden("malformed bearer token: segments are not JSON objects")
        if header.get("alg") != "RS256":
            raise Forbidden(f"token algorithm {str(header.get('alg'))[:20]!r} is not RS256")
        if not _is_number(payload.get("iat")) or not _is_number(payload.get("exp")):
            raise Forbidden("token lacks numeric iat/exp claims")
        return header, payload

    def _certs_for(self, kid: object) -> Certs:
        if kid is not None and not isinstance(kid, str):
            raise Forbidden("token key id is not a string")
        certs = self._certs.get()
        if kid is None or not isinstance(certs, Mapping) or kid in certs:
            return certs
        # Google rotates keys: a new key id may appear before our cached copy expires.
        certs = self._certs.get(refresh_for_unknown_key=True)
        if isinstance(certs, Mapping) and kid not in certs:
            raise Forbidden("token is signed with an unknown key id")
        return certs

    def _check_signature(self, token: str, certs: Certs, claims: Mapping[str, Any]) -> None:
        import google.auth.jwt

        # jwt.decode also checks iat/exp, against the system clock and with a vague error. A skew
        # wider than the distance from that clock to both claims turns its check into a no-op, so
        # _check_claims alone decides about time, against the caller's ``now``.
        wall = time.time()
        skew = abs(wall - claims["iat"]) + abs(wall - claims["exp"]) + 1.0
        try:
            google.auth.jwt.decode(
                token, certs=certs, verify=True, audience=None, clock_skew_in_seconds=skew
            )
        except Exception as exc:  # untrusted input: every failure is a refusal, never a 5xx
            raise Forbidden(
                f"token signature does not verify against the trusted certificates "
                f"({type(exc).__name__})"
            ) from exc

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        if now < claims["iat"] - self.clock_skew:
            raise Forbidden("token is issued in the future")
        if now > claims["exp"] + self.clock_skew:
            raise Forbidden("token has expired")
        if claims.get("aud") != self.audience:
            raise Forbidden("token audience does not match this app")
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Forbidden("token issuer is not Google")
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self.service_accounts:
            raise Forbidden("token is not from an allowed service account")
        if claims.get("email_verified") not in (True, "true"):
            raise Forbidden("token email is not verified")
