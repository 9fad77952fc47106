"""The policy: which proofs a task or cron request must carry, depending on where the app runs."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.config import Settings
from core.tasks.auth.oidc import OidcVerifier
from core.tasks.auth.queue_headers import TaskInfo, first_header, lowered_headers, task_info_of_lowered
from core.tasks.auth.signing import (
    CRON_MAX_AGE,
    SIGNATURE_HEADER,
    TASK_MAX_AGE,
    SigningKeys,
)
from core.tasks.errors import ConfigurationError, Forbidden

_RUNTIMES = frozenset({"local", "appengine", "cloudrun"})
_TARGETS = frozenset({"appengine", "http"})
_SIGNATURE_KEY = SIGNATURE_HEADER.lower()
#: Headers App Engine strips from outside traffic, so their presence proves its task queue sent the request.
_APPENGINE_PROOF = tuple((name.lower(), name) for name in ("X-AppEngine-QueueName", "X-AppEngine-TaskName"))


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
        self._keys = SigningKeys(settings.tasks_secret)
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
                         max_age: float | None, now: float | None) -> None:
        self._keys.verify(method, path, body, lowered.get(_SIGNATURE_KEY), max_age=max_age, now=now)

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
        lowered = lowered_headers(headers)
        self._check_signature(method, path, body, lowered, self.task_max_age, now)
        if self.settings.runtime == "appengine" and self.settings.tasks_target == "appengine":
            for key, name in _APPENGINE_PROOF:
                if first_header(lowered, key) is None:
                    raise Forbidden(f"missing {name} header: not sent by App Engine's task queue")
        elif self._needs_oidc:
            self._verify_oidc(lowered, now)
        return task_info_of_lowered(lowered)

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
        lowered = lowered_headers(headers)
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
