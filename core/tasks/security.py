"""Verification of requests to ``/_tasks/*``: who sent them and what the queue says about them.

Three independent proofs, combined by :class:`RequestVerifier` according to where the app runs:

* an HMAC signature (``X-Tasks-Signature``) over method, path, time and body, made with the app's
  secret when the task was enqueued, so only payloads this app produced ever run;
* the queue headers App Engine strips from outside traffic (``X-AppEngine-QueueName``, ...,
  ``X-Appengine-Cron``), trustworthy only when the app really runs on App Engine;
* an OIDC bearer token from Google, which Cloud Tasks HTTP targets and Cloud Scheduler attach.

Everything here works on plain values (header mappings, bytes, strings): no web framework, no
network at import. The only network use is the lazy, cached download of Google's certificates.
Every failure to verify is a :class:`Forbidden` (403) or :class:`BadTaskRequest` (400), never a
crash: a forged request must not turn into a 5xx that the queue would retry.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import hmac
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

from core.config import Settings
from core.tasks.errors import BadTaskRequest, ConfigurationError, Forbidden

logger = logging.getLogger(__name__)

# --- HMAC signatures -----------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Tasks-Signature"
#: A queued task may wait up to 31 days (Cloud Tasks retention); its signature must outlive that.
TASK_MAX_AGE: float = 32 * 24 * 3600.0
#: Cron pings are signed right before they are sent; an old one is a replay.
CRON_MAX_AGE: float = 5 * 60.0
#: How far in the future a signature timestamp may lie before it is refused (clock drift).
SIGNATURE_CLOCK_SKEW: float = 60.0

_SIGNATURE_SCHEME = "v1"
_CONTEXT = b"tasks-signature-v1"
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_HEX_MAC_RE = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_MAX_SIGNATURE_HEADER = 1024


def _secrets(secret: str) -> list[bytes]:
    """The keys of a comma-separated secret list, in order (first signs, all verify)."""
    keys = [part.strip().encode("utf-8") for part in (secret or "").split(",")]
    keys = [key for key in keys if key]
    if not keys:
        raise ConfigurationError("the task secret is empty: set TASKS_SECRET")
    return keys


def _signed_material(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    # Path and body enter as fixed-length digests, so no choice of path, time or body can shift
    # bytes from one field into another and reuse a signature.
    return b"\n".join(
        (
            _CONTEXT,
            method.encode("ascii"),
            str(timestamp).encode("ascii"),
            hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest().encode("ascii"),
            hashlib.sha256(body).hexdigest().encode("ascii"),
        )
    )


def _mac(key: bytes, material: bytes) -> str:
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def sign_request(
    secret: str, method: str, path: str, body: bytes, timestamp: int | None = None
) -> str:
    """The ``X-Tasks-Signature`` value for a request: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    ``secret`` may list several keys separated by commas; the first one signs. ``path`` is the
    URL path the app will see (no query string).
    """
    method = method.upper()
    if not _METHOD_RE.match(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be a non-negative int, got {timestamp!r}")
    material = _signed_material(method, path, timestamp, bytes(body))
    return f"t={timestamp},{_SIGNATURE_SCHEME}={_mac(_secrets(secret)[0], material)}"


def _parse_signature(header_value: str) -> tuple[int, list[str]]:
    """Timestamp and candidate MACs of a signature header; :class:`Forbidden` if malformed."""
    if len(header_value) > _MAX_SIGNATURE_HEADER:
        raise Forbidden(f"malformed {SIGNATURE_HEADER} header: too long")
    timestamp: int | None = None
    macs: list[str] = []
    for part in header_value.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise Forbidden(f"malformed {SIGNATURE_HEADER} header: expected key=value pairs")
        if key == "t":
            if timestamp is not None or not _TIMESTAMP_RE.match(value):
                raise Forbidden(f"malformed {SIGNATURE_HEADER} header: bad timestamp")
            timestamp = int(value)
        elif key == _SIGNATURE_SCHEME:
            if not _HEX_MAC_RE.match(value):
                raise Forbidden(f"malformed {SIGNATURE_HEADER} header: bad {_SIGNATURE_SCHEME} value")
            macs.append(value)
        # Other keys are left for future schemes and ignored.
    if timestamp is None:
        raise Forbidden(f"malformed {SIGNATURE_HEADER} header: no timestamp")
    if not macs:
        raise Forbidden(f"malformed {SIGNATURE_HEADER} header: no {_SIGNATURE_SCHEME} signature")
    return timestamp, macs


def verify_signature(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    header_value: str | None,
    *,
    max_age: float | None,
    now: float | None = None,
) -> None:
    """Check a signature made by :func:`sign_request`; raise :class:`Forbidden` saying why not.

    Any key of the comma-separated ``secret`` is accepted (key rotation). ``max_age`` bounds how
    old the signature may be in seconds (``None``: no bound); a timestamp more than
    :data:`SIGNATURE_CLOCK_SKEW` seconds ahead of ``now`` is refused either way.
    """
    keys = _secrets(secret)
    if header_value is None or not header_value.strip():
        raise Forbidden(f"missing {SIGNATURE_HEADER} header")
    timestamp, macs = _parse_signature(header_value.strip())
    method = method.upper()
    if not _METHOD_RE.match(method):
        raise Forbidden(f"unsupported HTTP method {method[:16]!r}")
    material = _signed_material(method, path, timestamp, bytes(body))
    # Compare against every key and candidate without stopping early.
    matched = False
    for key in keys:
        expected = _mac(key, material)
        for candidate in macs:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Forbidden(f"{SIGNATURE_HEADER} does not match this request (wrong key, path or body)")
    current = time.time() if now is None else now
    if timestamp - current > SIGNATURE_CLOCK_SKEW:
        raise Forbidden(f"{SIGNATURE_HEADER} timestamp lies in the future")
    if max_age is not None and current - timestamp > max_age:
        raise Forbidden(
            f"{SIGNATURE_HEADER} is too old ({int(current - timestamp)} s > {int(max_age)} s)"
        )


def sign_cron_ping(secret: str, path: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers the local server sends with its own cron ping of ``GET path``."""
    return {SIGNATURE_HEADER: sign_request(secret, "GET", path, b"", timestamp)}


# --- headers --------------------------------------------------------------------------------------

def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """A case-insensitive view: works for plain dicts and werkzeug's header objects alike."""
    return {str(key).lower(): str(value) for key, value in headers.items()}


def _first(headers: Mapping[str, str], *names: str) -> str | None:
    """The first present, non-blank value among ``names`` (already lower-case)."""
    for name in names:
        value = headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


_COUNT_RE = re.compile(r"^[0-9]{1,9}$")
_ETA_RE = re.compile(r"^[0-9]{1,12}(\.[0-9]{0,9})?$")


def _count(value: str | None, header: str) -> int | None:
    if value is None:
        return None
    if not _COUNT_RE.match(value):
        raise BadTaskRequest(f"header {header} is not a non-negative integer: {value[:40]!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the queue says about the task being run (App Engine or Cloud Tasks headers)."""

    #: The short queue name (``default``), also when the queue sent a full resource path.
    queue: str | None = None
    task_name: str | None = None
    #: Attempts before this one, including those that never reached the app.
    retry_count: int = 0
    #: Attempts before this one that reached the app and failed; never negative.
    execution_count: int = 0
    #: Scheduled time in seconds since the epoch.
    eta: float | None = None
    #: HTTP status of the previous attempt.
    previous_response: int | None = None
    retry_reason: str | None = None

    @property
    def eta_datetime(self) -> datetime.datetime | None:
        """The scheduled time as an aware UTC datetime."""
        if self.eta is None:
            return None
        return datetime.datetime.fromtimestamp(self.eta, tz=datetime.UTC)


def _short_name(value: str | None, collection: str) -> str | None:
    """``projects/p/locations/l/queues/NAME`` → ``NAME`` (the emulator sends full paths)."""
    if value is None:
        return None
    if f"/{collection}/" in value or value.startswith(f"{collection}/"):
        value = value.rstrip("/").rsplit("/", 1)[-1]
    return value or None


def task_info(headers: Mapping[str, str]) -> TaskInfo:
    """Parse the queue's headers (``X-AppEngine-*`` first, then ``X-CloudTasks-*``).

    Raises :class:`BadTaskRequest` for malformed numbers. A missing execution count falls back to
    the retry count, then 0, so a retry limit always terminates.
    """
    lowered = _lowered(headers)

    def get(suffix: str) -> tuple[str | None, str]:
        """The value of ``X-AppEngine-<suffix>`` or else ``X-CloudTasks-<suffix>``, and its name."""
        names = (f"X-AppEngine-{suffix}", f"X-CloudTasks-{suffix}")
        for name in names:
            value = _first(lowered, name.lower())
            if value is not None:
                return value, name
        return None, names[0]

    queue, _ = get("QueueName")
    task_name, _ = get("TaskName")
    retry_count = _count(*get("TaskRetryCount"))
    execution_count = _count(*get("TaskExecutionCount"))
    eta_raw, eta_header = get("TaskETA")
    eta: float | None = None
    if eta_raw is not None:
        if not _ETA_RE.match(eta_raw):
            raise BadTaskRequest(f"header {eta_header} is not a timestamp: {eta_raw[:40]!r}")
        eta = float(eta_raw)
    previous_response = _count(*get("TaskPreviousResponse"))
    retry_reason, _ = get("TaskRetryReason")
    if execution_count is None:
        execution_count = retry_count if retry_count is not None else 0
    return TaskInfo(
        queue=_short_name(queue, "queues"),
        task_name=_short_name(task_name, "tasks"),
        retry_count=retry_count or 0,
        execution_count=execution_count,
        eta=eta,
        previous_response=previous_response,
        retry_reason=retry_reason,
    )


# --- OIDC tokens ----------------------------------------------------------------------------------

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


# --- policy ---------------------------------------------------------------------------------------

_RUNTIMES = frozenset({"local", "appengine", "cloudrun"})
_TARGETS = frozenset({"appengine", "http"})


class RequestVerifier:
    """Decides whether a task or cron request may run, from :class:`Settings`.

    Tasks always need the HMAC signature. On App Engine with App Engine targets they must also
    carry the queue headers App Engine strips from outside traffic; with HTTP targets outside
    local development they must also carry a valid OIDC token. Cron pings are trusted by
    ``X-Appengine-Cron`` on App Engine, by an OIDC token on HTTP targets and by a fresh signature
    locally. Build it at start-up: a configuration that cannot verify raises
    :class:`ConfigurationError` here rather than on every request.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        oidc_verifier: OidcVerifier | None = None,
        task_max_age: float | None = TASK_MAX_AGE,
        cron_max_age: float = CRON_MAX_AGE,
    ) -> None:
        if settings.runtime not in _RUNTIMES:
            raise ConfigurationError(f"unknown runtime {settings.runtime!r}")
        if settings.tasks_target not in _TARGETS:
            raise ConfigurationError(
                f"unknown TASKS_TARGET {settings.tasks_target!r}: use 'appengine' or 'http'"
            )
        if settings.runtime == "cloudrun" and settings.tasks_target != "http":
            raise ConfigurationError("on Cloud Run tasks and cron arrive over HTTP: set TASKS_TARGET=http")
        _secrets(settings.tasks_secret)
        self.settings = settings
        self.task_max_age = task_max_age
        self.cron_max_age = cron_max_age
        self._needs_oidc = settings.runtime != "local" and settings.tasks_target == "http"
        if self._needs_oidc and oidc_verifier is None:
            oidc_verifier = OidcVerifier(
                audience=settings.tasks_oidc_audience or settings.tasks_target_url or "",
                service_accounts=settings.tasks_service_accounts,
                certs=settings.tasks_oidc_certs,
            )
        self.oidc_verifier = oidc_verifier

    def _check_signature(self, method: str, path: str, body: bytes, lowered: Mapping[str, str],
                         max_age: float, now: float | None) -> None:
        verify_signature(self.settings.tasks_secret, method, path, body, lowered.get(SIGNATURE_HEADER.lower()),
                         max_age=max_age, now=now)

    def verify_task(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now: float | None = None,
    ) -> TaskInfo:
        """The queue's :class:`TaskInfo` if the task request may run; raise 403/400 otherwise."""
        lowered = _lowered(headers)
        self._check_signature(method, path, body, lowered, self.task_max_age, now)
        if self.settings.runtime == "appengine" and self.settings.tasks_target == "appengine":
            for name in ("X-AppEngine-QueueName", "X-AppEngine-TaskName"):
                if _first(lowered, name.lower()) is None:
                    raise Forbidden(f"missing {name} header: not sent by App Engine's task queue")
        elif self._needs_oidc:
            self._verify_oidc(lowered, now)
        return task_info(lowered)

    def verify_cron(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now: float | None = None,
    ) -> None:
        """Return if the cron ping may run; raise :class:`Forbidden` otherwise."""
        lowered = _lowered(headers)
        if self.settings.runtime == "local":
            self._check_signature(method, path, body, lowered, self.cron_max_age, now)
            return
        if self.settings.runtime == "appengine" and lowered.get("x-appengine-cron", "").strip().lower() == "true":
            return
        if self._needs_oidc:
            self._verify_oidc(lowered, now)
            return
        raise Forbidden("missing X-Appengine-Cron header: not sent by App Engine cron")

    def _verify_oidc(self, lowered: Mapping[str, str], now: float | None) -> dict[str, Any]:
        assert self.oidc_verifier is not None
        return self.oidc_verifier.verify(lowered.get("authorization"), now=now)
