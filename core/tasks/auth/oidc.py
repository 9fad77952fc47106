"""Verification of the OIDC bearer tokens Google attaches to Cloud Tasks HTTP targets and Cloud Scheduler jobs.

google-auth decodes the token and decides on its signature, its audience and (on the real clock)
its time window; what it does not know is checked here: the algorithm Google signs with, the
issuer, the allowed service accounts and their verified email. Every refusal is a
:class:`Forbidden` naming the reason, never a crash: a forged token must not become a 5xx.

The time window is judged on the real clock, never on the app's (``core.clock``): Google issued
the token on real time, and a test that advances the app's clock must not make a live token look
expired nor an expired one look live. The certificate cache's TTL is real waiting (monotonic).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import google.auth.exceptions
import google.auth.jwt

from core.tasks.auth.certs import CERTS_DEFAULT_TTL, CertificateCache
from core.tasks.errors import ConfigurationError, Forbidden

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
#: Tolerated clock difference for ``iat`` / ``exp``.
OIDC_CLOCK_SKEW: float = 60.0
_MAX_TOKEN_LENGTH = 16_384


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        self._certs = CertificateCache(certs, ttl=cache_ttl, clock=clock)

    @property
    def certificate_loads(self) -> int:
        """How often the certificates were (re)loaded."""
        return self._certs.loads

    def verify(self, authorization_header: str | None, *, now: float | None = None) -> dict[str, Any]:
        """The token's claims if ``Authorization: Bearer <token>`` is valid, else :class:`Forbidden`.

        ``now`` (seconds since the epoch) replaces the real clock for the time window.
        """
        token = self._bearer_token(authorization_header)
        header, unverified = self._unverified_parts(token)
        certs = self._certs.for_key(header.get("kid"))
        current = time.time() if now is None else now
        # google-auth judges the time window on the real clock; widened by the distance to
        # ``current`` it never refuses what ``current`` allows, and _time_refusal decides at
        # ``current``. Without ``now`` both judge the same window.
        skew = self.clock_skew + abs(time.time() - current)
        try:
            claims = google.auth.jwt.decode(token, certs=certs, audience=self.audience,
                                            clock_skew_in_seconds=skew)
        except google.auth.exceptions.InvalidValue as exc:
            raise Forbidden(self._refusal(unverified, current) or self._bad_signature(exc)) from exc
        except Exception as exc:  # untrusted input: every other failure is a refusal, never a 5xx
            raise Forbidden(self._bad_signature(exc)) from exc
        refusal = self._time_refusal(claims, current) or self._identity_refusal(claims)
        if refusal:
            raise Forbidden(refusal)
        return dict(claims)

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
        """Header and claims before any trust: to pick the key and refuse early what cannot pass."""
        try:
            header = google.auth.jwt.decode_header(token)
            claims = google.auth.jwt.decode(token, verify=False)
        except Exception as exc:  # untrusted input: whatever google-auth's parser raises is a refusal
            raise Forbidden("malformed bearer token: not a JWT of JSON objects") from exc
        if header.get("alg") != "RS256":  # Google signs with RS256; google-auth would take others
            raise Forbidden(f"token algorithm {str(header.get('alg'))[:20]!r} is not RS256")
        if header.get("kid") is not None and not isinstance(header.get("kid"), str):
            raise Forbidden("token key id is not a string")
        # google-auth compares these with arithmetic: a string would raise, NaN would pass.
        if not _is_number(claims.get("iat")) or not _is_number(claims.get("exp")):
            raise Forbidden("token lacks numeric iat/exp claims")
        return header, claims

    @staticmethod
    def _bad_signature(exc: Exception) -> str:
        return f"token signature does not verify against the trusted certificates ({type(exc).__name__})"

    def _refusal(self, claims: Mapping[str, Any], now: float) -> str | None:
        """Why google-auth refused a value: the time window or the audience (None: neither)."""
        if claims.get("aud") != self.audience:
            return "token audience does not match this app"
        return self._time_refusal(claims, now)

    def _time_refusal(self, claims: Mapping[str, Any], now: float) -> str | None:
        if now < claims["iat"] - self.clock_skew:
            return "token is issued in the future"
        if now > claims["exp"] + self.clock_skew:
            return "token has expired"
        return None

    def _identity_refusal(self, claims: Mapping[str, Any]) -> str | None:
        if claims.get("iss") not in GOOGLE_ISSUERS:
            return "token issuer is not Google"
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self.service_accounts:
            return "token is not from an allowed service account"
        if claims.get("email_verified") not in (True, "true"):
            return "token email is not verified"
        return None
