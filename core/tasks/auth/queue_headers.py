"""What the queue says about a task: App Engine / Cloud Tasks headers read into :class:`TaskInfo`."""
from __future__ import annotations

import dataclasses
import datetime
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from core.tasks.errors import BadTaskRequest


class LoweredHeaders(dict[str, str]):
    """Headers whose names are already lower-case: :func:`lowered_headers` takes them as they are."""


class HeaderPairs(Protocol):
    """Request headers as a mapping or werkzeug's ``Headers`` give them: ``(name, value)`` pairs."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def lowered_headers(headers: HeaderPairs) -> Mapping[str, str]:
    """A case-insensitive view: works for plain dicts and werkzeug's header objects alike."""
    if isinstance(headers, (LoweredHeaders, EnvironHeaders)):
        return headers
    return LoweredHeaders((str(key).lower(), str(value)) for key, value in headers.items())


class EnvironHeaders(Mapping[str, str]):
    """The request headers of a WSGI ``environ``, lower-case names looked up when read.

    A push is read for a dozen headers out of the environ's thirty-odd keys: each lookup goes
    straight to ``HTTP_X_FOO`` instead of copying every header first.
    """

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, object]) -> None:
        self.environ = environ

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        value = self.environ.get(_environ_key(name))
        return default if value is None or (value == "" and name in _CGI_NAMES) else str(value)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        for key in self.environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()
            elif key in _CGI_KEYS and self.environ[key]:
                yield _CGI_KEYS[key]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"EnvironHeaders({dict(self.items())!r})"


#: The two headers a WSGI environ keeps without the ``HTTP_`` prefix.
_CGI_KEYS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
_CGI_NAMES = {name: key for key, name in _CGI_KEYS.items()}


@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    """``x-foo`` → ``HTTP_X_FOO`` (``content-type`` → ``CONTENT_TYPE``)."""
    return _CGI_NAMES.get(name) or "HTTP_" + name.upper().replace("-", "_")


def environ_headers(environ: Mapping[str, object]) -> EnvironHeaders:
    """The request headers of a WSGI ``environ``, by lower-case name (``x-foo`` reads ``HTTP_X_FOO``)."""
    return EnvironHeaders(environ)


def first_header(headers: Mapping[str, str], *names: str) -> str | None:
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
    if value is None or collection not in value:  # a plain name: what App Engine sends
        return value or None
    if f"/{collection}/" in value or value.startswith(f"{collection}/"):
        value = value.rstrip("/").rsplit("/", 1)[-1]
    return value or None


#: Per field, the headers that may carry it, preferred first, as (lower-case key, display name).
_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    suffix: tuple((name.lower(), name) for name in (f"X-AppEngine-{suffix}", f"X-CloudTasks-{suffix}"))
    for suffix in ("QueueName", "TaskName", "TaskRetryCount", "TaskExecutionCount", "TaskETA",
                   "TaskPreviousResponse", "TaskRetryReason")
}
#: The same headers by their WSGI environ keys (``HTTP_X_APPENGINE_QUEUENAME``), for :class:`EnvironHeaders`.
_ENVIRON_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    suffix: tuple((_environ_key(key), name) for key, name in candidates) for suffix, candidates in _FIELDS.items()
}


def _reader(lowered: Mapping[str, str]) -> tuple[Callable[[str], object], dict[str, tuple[tuple[str, str], ...]]]:
    """How to look the queue's headers up: an environ's by its own keys (a dict lookup each), else by name."""
    if isinstance(lowered, EnvironHeaders):
        return lowered.environ.get, _ENVIRON_FIELDS
    return lowered.get, _FIELDS


def _get(get: Callable[[str], object], candidates: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
    """The stripped value of ``X-AppEngine-<suffix>`` or else ``X-CloudTasks-<suffix>`` (blank counts as
    missing), and the name of the header it came from."""
    (key, name), (other, other_name) = candidates
    value = get(key)
    if value is not None and (value := str(value).strip()):
        return value, name
    value = get(other)
    if value is not None and (value := str(value).strip()):
        return value, other_name
    return None, name


def task_info(headers: Mapping[str, str]) -> TaskInfo:
    """Parse the queue's headers (``X-AppEngine-*`` first, then ``X-CloudTasks-*``).

    Raises :class:`BadTaskRequest` for malformed numbers. A missing execution count falls back to
    the retry count, then 0, so a retry limit always terminates.
    """
    return task_info_of_lowered(lowered_headers(headers))


def task_info_of_lowered(lowered: Mapping[str, str]) -> TaskInfo:
    """:func:`task_info` of headers already read by :func:`lowered_headers` (or of a WSGI environ's)."""
    get, fields = _reader(lowered)
    queue, _ = _get(get, fields["QueueName"])
    task_name, _ = _get(get, fields["TaskName"])
    retry_count = _count(*_get(get, fields["TaskRetryCount"]))
    execution_count = _count(*_get(get, fields["TaskExecutionCount"]))
    eta_raw, eta_header = _get(get, fields["TaskETA"])
    eta: float | None = None
    if eta_raw is not None:
        if not _ETA_RE.match(eta_raw):
            raise BadTaskRequest(f"header {eta_header} is not a timestamp: {eta_raw[:40]!r}")
        eta = float(eta_raw)
    previous_response = _count(*_get(get, fields["TaskPreviousResponse"]))
    retry_reason, _ = _get(get, fields["TaskRetryReason"])
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
