"""What the local queue's SQLite file holds per task, as named rows, and the checks a request passes.

A request becomes a :class:`NewTask` once it passed what Cloud Tasks would refuse too; the
dispatcher leases :class:`LeasedTask` rows and writes :class:`FailedAttempt` rows back; listings show
:class:`StoredTask`.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from typing import NamedTuple

from core.tasks.transports.base import MAX_SCHEDULE_AHEAD, TaskRequest

QUEUED, LEASED, FAILED = 0, 1, 2
STATE_NAMES = {QUEUED: "queued", LEASED: "leased", FAILED: "failed"}

# Headers the queue sets itself; a request's own values for them are dropped, as Cloud Tasks does.
_RESERVED_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "user-agent"}
_RESERVED_PREFIXES = ("x-appengine-", "x-cloudtasks-", "x-google-")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")
_METHODS = {"POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"}


class NewTask(NamedTuple):
    """A row to insert, in the column order of the insert statement."""

    queue: str
    name: str
    named: bool
    method: str
    path: str
    #: The request's own header lines, ``"Name: value\r\n"`` each, as the dispatcher sends them.
    headers: str
    body: bytes
    target_version: str | None
    created: float
    eta: float
    #: Seconds the dispatcher waits for a response, or None for the queue's deadline.
    deadline: float | None


class LeasedTask(NamedTuple):
    """A task the dispatcher took to push: what the push needs, in ``LEASE_COLUMNS`` order."""

    id: int
    name: str
    named: int
    method: str
    path: str
    headers: str
    body: bytes
    eta: float
    retry_count: int
    execution_count: int
    first_attempt: float | None
    last_status: int | None
    deadline: float | None


LEASE_COLUMNS = ", ".join(LeasedTask._fields)


class FailedAttempt(NamedTuple):
    """An attempt that did not succeed: the task goes back to the queue for a retry or stays failed."""

    state: int
    eta: float
    #: 1 when the app answered (other than 503): counts towards ``execution_count``.
    responded: int
    started: float
    status: int | None
    error: str
    id: int


@dataclasses.dataclass(frozen=True)
class StoredTask:
    """A task as the store holds it, for listings and inspection."""

    id: int
    queue: str
    name: str
    named: bool
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    target_version: str | None
    created: datetime.datetime
    eta: datetime.datetime
    #: ``queued``, ``leased`` (being pushed) or ``failed`` (out of retries, kept for inspection).
    state: str
    first_attempt: datetime.datetime | None
    #: Attempts made so far: the ``X-AppEngine-TaskRetryCount`` of the next push.
    retry_count: int
    #: Attempts that got a response other than 503: the next ``X-AppEngine-TaskExecutionCount``.
    execution_count: int
    last_status: int | None
    last_error: str | None


STORED_COLUMNS = (
    "id, queue, name, named, method, path, headers, body, target_version, created, eta, state, "
    "first_attempt, retry_count, execution_count, last_status, last_error"
)


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def new_task(request: TaskRequest, now: float, auto_name: str) -> NewTask:
    """A task row from a request, or ValueError for what Cloud Tasks would refuse too."""
    method = request.method.upper()
    if method not in _METHODS:
        raise ValueError(f"unsupported HTTP method {request.method!r}")
    if not _PATH_RE.match(request.path):
        raise ValueError(f"task path must be printable ASCII without spaces: {request.path!r}")
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if not _HEADER_NAME_RE.match(key):
            raise ValueError(f"invalid header name {key!r}")
        if any(c in value for c in "\r\n\0") or not value.isascii():
            raise ValueError(f"invalid value for header {key!r}")
        lower = key.lower()
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
            continue
        headers[key] = value
    if request.body and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/octet-stream"
    eta = now if request.eta is None else request.eta.timestamp()
    if eta > now + MAX_SCHEDULE_AHEAD.total_seconds():
        raise ValueError(f"schedule time more than {MAX_SCHEDULE_AHEAD.days} days ahead")
    return NewTask(
        queue=request.queue,
        name=request.name if request.name is not None else auto_name,
        named=request.name is not None,
        method=method,
        path=request.path,
        headers="".join(f"{key}: {value}\r\n" for key, value in headers.items()),
        body=bytes(request.body),
        target_version=request.target_version,
        created=now,
        eta=eta,
        deadline=None if request.dispatch_deadline is None else request.dispatch_deadline.total_seconds(),
    )


def stored_task(row: tuple[object, ...]) -> StoredTask:
    """A :class:`StoredTask` from a row of ``STORED_COLUMNS``."""
    (task_id, queue, name, named, method, path, headers, body, target_version, created, eta, state,
     first_attempt, retry_count, execution_count, last_status, last_error) = row
    return StoredTask(
        id=int(task_id),  # type: ignore[call-overload]
        queue=str(queue), name=str(name), named=bool(named), method=str(method), path=str(path),
        headers=dict(line.split(": ", 1) for line in str(headers).split("\r\n") if line),
        body=bytes(body),  # type: ignore[call-overload]
        target_version=None if target_version is None else str(target_version),
        created=_utc(float(created)), eta=_utc(float(eta)),  # type: ignore[arg-type]
        state=STATE_NAMES[int(state)],  # type: ignore[call-overload]
        first_attempt=None if first_attempt is None else _utc(float(first_attempt)),  # type: ignore[arg-type]
        retry_count=int(retry_count), execution_count=int(execution_count),  # type: ignore[call-overload]
        last_status=None if last_status is None else int(last_status),  # type: ignore[call-overload]
        last_error=None if last_error is None else str(last_error),
    )
