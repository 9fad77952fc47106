"""Google's public certificates for OIDC tokens: fetched lazily, cached, refreshed when keys rotate.

google-auth verifies tokens but re-fetches the certificates on every call unless given a caching
transport; this cache follows the server's ``Cache-Control``, keeps serving the last good copy
when a refresh fails and refreshes early, at most once a minute, for a key id it does not know.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

import google.auth.transport.requests

from core.tasks.errors import ConfigurationError, Forbidden

logger = logging.getLogger(__name__)

#: How long downloaded certificates are kept when the server does not say (Cache-Control).
CERTS_DEFAULT_TTL: float = 3600.0
#: An unknown key id triggers a refresh at most this often, so garbage tokens cannot hammer Google.
CERTS_MIN_REFRESH: float = 60.0
_CERTS_TTL_BOUNDS = (60.0, 24 * 3600.0)
_CERTS_FETCH_TIMEOUT = 10.0
_PEM_BLOCK_RE = re.compile(
    r"-----BEGIN (CERTIFICATE|PUBLIC KEY)-----[A-Za-z0-9+/=\s]+-----END \1-----"
)
_MAX_AGE_RE = re.compile(r"max-age\s*=\s*([0-9]+)", re.IGNORECASE)

#: kid → PEM (Google's format and JSON files), or PEM blocks without key ids (PEM files).
Certs = Mapping[str, str] | list[str]


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


class CertificateCache:
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
        self._request: google.auth.transport.requests.Request | None = None
        #: How many times the source was read (for monitoring and tests).
        self.loads = 0

    def for_key(self, kid: str | None) -> Certs:
        """The certificates to check a token signed with key ``kid`` against.

        Google rotates keys: a new key id may appear before the cached copy expires, so an unknown
        one refreshes the cache (rate-limited) before the token is refused.
        """
        certs = self.get()
        if kid is None or not isinstance(certs, Mapping) or kid in certs:
            return certs
        certs = self.get(refresh_for_unknown_key=True)
        if isinstance(certs, Mapping) and kid not in certs:
            raise Forbidden("token is signed with an unknown key id")
        return certs

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
