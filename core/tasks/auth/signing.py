"""HMAC signatures of task requests: ``X-Tasks-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

Made with the app's secret when a task is enqueued (or a local cron ping is sent), checked when it
arrives, so only payloads this app produced ever run.

Timestamps are made and judged on the real clock, never on the app's (``core.clock``): freshness
guards against a request captured outside and replayed later, which is a matter of real time, and
signer and verifier agree on it even while a test has advanced the app's clock.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time

from core.tasks.errors import ConfigurationError, Forbidden

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
#: The header as :meth:`SigningKeys.sign` writes it, read in one match (anything else takes the general parse).
_PLAIN_SIGNATURE_RE = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")


def _secret_keys(secret: str) -> list[bytes]:
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


def _parse_signature(header_value: str) -> tuple[int, list[str]]:
    """Timestamp and candidate MACs of a signature header; :class:`Forbidden` if malformed."""
    plain = _PLAIN_SIGNATURE_RE.fullmatch(header_value)
    if plain is not None:  # what this app sends: one timestamp, one MAC
        return int(plain[1]), [plain[2]]
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


def _material_to_sign(method: str, path: str, body: bytes, timestamp: int | None) -> tuple[int, bytes]:
    """The timestamp and signed bytes of an outgoing request; :class:`ValueError` for a bad one."""
    method = method.upper()
    if not _METHOD_RE.match(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be a non-negative int, got {timestamp!r}")
    return timestamp, _signed_material(method, path, timestamp, bytes(body))


class SigningKeys:
    """The keys of a comma-separated secret, prepared once: the first signs, every one verifies.

    Each key is held as a keyed HMAC state that is copied per message, so a request pays for
    hashing its own bytes only, not for parsing the secret or padding the key again.
    """

    __slots__ = ("_macs",)

    def __init__(self, secret: str) -> None:
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in _secret_keys(secret))

    def _mac(self, index: int, material: bytes) -> str:
        mac = self._macs[index].copy()
        mac.update(material)
        return mac.hexdigest()

    def sign(self, method: str, path: str, body: bytes, timestamp: int | None = None) -> str:
        """The ``X-Tasks-Signature`` value for a request (see :func:`sign_request`)."""
        timestamp, material = _material_to_sign(method, path, body, timestamp)
        return f"t={timestamp},{_SIGNATURE_SCHEME}={self._mac(0, material)}"

    def verify(self, method: str, path: str, body: bytes, header_value: str | None, *,
               max_age: float | None, now: float | None = None) -> None:
        """Check a signature (see :func:`verify_signature`); raise :class:`Forbidden` saying why not."""
        if header_value is None or not header_value.strip():
            raise Forbidden(f"missing {SIGNATURE_HEADER} header")
        timestamp, macs = _parse_signature(header_value.strip())
        method = method.upper()
        if not _METHOD_RE.match(method):
            raise Forbidden(f"unsupported HTTP method {method[:16]!r}")
        material = _signed_material(method, path, timestamp, bytes(body))
        # Compare against every key and candidate without stopping early.
        matched = False
        for index in range(len(self._macs)):
            expected = self._mac(index, material)
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


def sign_request(
    secret: str, method: str, path: str, body: bytes, timestamp: int | None = None
) -> str:
    """The ``X-Tasks-Signature`` value for a request: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    ``secret`` may list several keys separated by commas; the first one signs. ``path`` is the
    URL path the app will see (no query string).
    """
    key = _secret_keys(secret)[0]
    timestamp, material = _material_to_sign(method, path, body, timestamp)
    return f"t={timestamp},{_SIGNATURE_SCHEME}={hmac.new(key, material, hashlib.sha256).hexdigest()}"


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
    SigningKeys(secret).verify(method, path, body, header_value, max_age=max_age, now=now)


def sign_cron_ping(secret: str, path: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers the local server sends with its own cron ping of ``GET path``."""
    return {SIGNATURE_HEADER: sign_request(secret, "GET", path, b"", timestamp)}
