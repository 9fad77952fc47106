"""Queue configuration in App Engine's ``queue.yaml`` format, parsed into typed values.

One file describes the queues for both backends: the local queue reads rates, limits and retry
parameters from it directly, and the Cloud Tasks adapter maps the same fields onto a queue's
``RateLimits`` and ``RetryConfig``. Parsing is pure (no I/O beyond reading the file) and every
bad value raises :class:`ValueError` naming the queue and the field.

Field mapping to Cloud Tasks:

=======================================  ==========================================================
queue.yaml                               Cloud Tasks
=======================================  ==========================================================
``rate``                                 ``rate_limits.max_dispatches_per_second``
``bucket_size``                          ``rate_limits.max_burst_size`` (output only there)
``max_concurrent_requests``              ``rate_limits.max_concurrent_dispatches``
``retry_parameters.task_retry_limit``    ``retry_config.max_attempts`` = limit + 1 (see below)
``retry_parameters.task_age_limit``      ``retry_config.max_retry_duration``
``retry_parameters.min_backoff_seconds`` ``retry_config.min_backoff``
``retry_parameters.max_backoff_seconds`` ``retry_config.max_backoff``
``retry_parameters.max_doublings``       ``retry_config.max_doublings``
``target``                               ``app_engine_routing_override.service``
``dispatch_deadline`` (our extension)    ``Task.dispatch_deadline``
=======================================  ==========================================================

``task_retry_limit`` counts *retries*, as in App Engine: a limit of 0 allows one attempt and no
retry, so a task ends after ``limit + 1`` attempts (:attr:`RetryConfig.max_attempts`). When both a
retry limit and an age limit are set, a task is retried until *both* are reached, as App Engine
and Cloud Tasks do.

Each app has one :class:`QueueTable`, loaded once from its ``queue.yaml`` (``runtime.queues``):
every transport, every check of a queue's name and every retry decision asks it. An unknown
queue is :class:`UnknownQueue` at the call, naming the queue and the file. Whether an attempt is
the last one allowed is decided in one place, :func:`last_allowed_attempt`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from core.tasks.errors import ConfigurationError
from core.tasks.transports.base import QUEUE_NAME_RE

DEFAULT_QUEUE = "default"
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*([smhd])\s*$")
_AGE_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_QUEUE_FIELDS = {
    "name", "rate", "bucket_size", "max_concurrent_requests", "retry_parameters", "target",
    "dispatch_deadline", "mode",
}
_RETRY_FIELDS = {
    "task_retry_limit", "task_age_limit", "min_backoff_seconds", "max_backoff_seconds", "max_doublings",
}


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """How a queue retries a task whose push did not answer 2xx.

    ``None`` limits mean "no limit". Defaults are App Engine's.
    """

    task_retry_limit: int | None = None
    task_age_limit: timedelta | None = None
    min_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 3600.0
    max_doublings: int = 16

    @property
    def max_attempts(self) -> int | None:
        """Attempts in all (first one included): the value Cloud Tasks calls ``max_attempts``."""
        return None if self.task_retry_limit is None else self.task_retry_limit + 1


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """One push queue. Defaults are App Engine's; ``rate_per_second == 0`` pauses the queue."""

    name: str
    rate_per_second: float = 5.0
    bucket_size: int = 5
    max_concurrent_requests: int | None = None
    retry: RetryConfig = dataclasses.field(default_factory=RetryConfig)
    target: str | None = None
    dispatch_deadline: timedelta = timedelta(minutes=10)

    @property
    def paused(self) -> bool:
        return self.rate_per_second == 0


class UnknownQueue(ConfigurationError, LookupError):
    """A task names a queue its app's queue table does not define (Cloud Tasks: NOT_FOUND)."""


class QueueTable(Mapping[str, QueueConfig]):
    """The queues of one app: its ``queue.yaml`` (``source``), plus its default queue.

    Loaded once per app and read by everything that names a queue: the transports, the checks at
    the call, the pipeline's retry limits. A mapping of queue name to :class:`QueueConfig`.
    """

    def __init__(self, configs: Mapping[str, QueueConfig], *, source: Path | None = None,
                 default: str = DEFAULT_QUEUE) -> None:
        self._configs = dict(configs)
        # The queue calls without one go to always exists, as App Engine's ``default`` does.
        self._configs.setdefault(default, QueueConfig(name=default))
        self.source = source
        self.default = default

    @classmethod
    def load(cls, path: Path, *, default: str = DEFAULT_QUEUE) -> QueueTable:
        """The table of the ``queue.yaml`` at ``path`` (a missing file: only the default queue)."""
        return cls(load_queue_config(path), source=Path(path), default=default)

    def __getitem__(self, name: str) -> QueueConfig:
        return self._configs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __contains__(self, name: object) -> bool:
        return name in self._configs

    def __len__(self) -> int:
        return len(self._configs)

    def __repr__(self) -> str:
        return f"QueueTable({sorted(self._configs)!r}, source={str(self.source)!r})"

    @property
    def described_source(self) -> str:
        """The file the table comes from, as an error message names it."""
        return f"{self.source.name} ({self.source})" if self.source is not None else "the app's queue table"

    def require(self, name: Any, what: str) -> str:
        """``name`` if the table defines it; else :class:`UnknownQueue` saying ``what`` named it and where to add it."""
        if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
            raise ValueError(f"{what}: invalid queue name {name!r}: use letters, digits and hyphens")
        if name not in self._configs:
            raise UnknownQueue(f"{what}: unknown queue {name!r}: {self.described_source} defines only "
                               f"{', '.join(sorted(self._configs))}; add it there or name one of those")
        return name

    def retry_of(self, name: str) -> RetryConfig:
        """The retry parameters of ``name`` (App Engine's defaults for a queue the table lacks)."""
        config = self._configs.get(name)
        return config.retry if config is not None else RetryConfig()


def last_allowed_attempt(number: int, *, retry: RetryConfig | None = None, max_attempts: int | None = None,
                         age: timedelta | None = None, queue: str | None = None) -> str | None:
    """Why attempt ``number`` (1-based, counted since the task was last sent) is its last one, or ``None``.

    The one retry-limit rule. The task's own ``max_attempts`` ends it when reached; otherwise the
    queue's ``task_retry_limit`` and ``task_age_limit`` do, both when both are set (as Cloud Tasks
    does). ``age`` is the time since the task was sent; ``None`` (unknown) leaves the age limit out.
    """
    if max_attempts is not None and number >= max_attempts:
        return f"attempt {number} of {max_attempts}"
    if retry is None:
        return None
    reached = []
    if retry.task_retry_limit is not None:
        reached.append(number - 1 >= retry.task_retry_limit)
    if retry.task_age_limit is not None and age is not None:
        reached.append(age >= retry.task_age_limit)
    if reached and all(reached):
        return f"attempt {number}, the limit of queue {queue!r}" if queue else f"attempt {number}, the queue's limit"
    return None


def backoff_delay(retry: RetryConfig, attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt (1-based) before the next one.

    Cloud Tasks semantics: the first retry waits ``min_backoff``, the wait doubles
    ``max_doublings`` times, then grows linearly by the last doubled step, and never exceeds
    ``max_backoff``. With min 10 s, max 300 s and 3 doublings: 10, 20, 40, 80, 160, 240, 300, 300...
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    doublings = min(attempt - 1, retry.max_doublings)
    try:
        step = math.ldexp(retry.min_backoff_seconds, doublings)
    except OverflowError:
        return float(retry.max_backoff_seconds)
    delay = step if attempt - 1 <= retry.max_doublings else step * (attempt - retry.max_doublings)
    return float(min(delay, retry.max_backoff_seconds))


def parse_rate(text: str) -> float:
    """``"500/s"``, ``"10/m"``, ``"1/h"``, ``"1/d"`` → tasks per second."""
    match = _RATE_RE.match(str(text))
    if not match:
        raise ValueError(f"expected a rate like '5/s', '10/m', '1/h' or '1/d', got {text!r}")
    return float(match.group(1)) / _UNIT_SECONDS[match.group(2)]


def parse_age(text: str) -> timedelta:
    """``"2d"``, ``"1h"``, ``"30m"``, ``"10s"`` (or a sum like ``"1h30m"``) → a timedelta."""
    raw = str(text).strip()
    parts = _AGE_PART_RE.findall(raw)
    if not raw or "".join(number + unit for number, unit in parts) != raw:
        raise ValueError(f"expected a duration like '2d', '1h', '30m' or '10s', got {text!r}")
    return timedelta(seconds=sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts))


def parse_queue_config(text: str) -> dict[str, QueueConfig]:
    """Parse the text of a ``queue.yaml``; the result always has a ``default`` queue."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"queue.yaml is not valid YAML: {exc}") from exc
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ValueError("queue.yaml must be a mapping with a 'queue' list")
    entries = document.get("queue") or []
    if not isinstance(entries, list):
        raise ValueError("queue.yaml: 'queue' must be a list of queues")
    queues: dict[str, QueueConfig] = {}
    for index, entry in enumerate(entries):
        config = _parse_queue(entry, index)
        if config is None:
            continue
        if config.name in queues:
            raise ValueError(f"queue {config.name!r}: defined twice")
        queues[config.name] = config
    queues.setdefault(DEFAULT_QUEUE, QueueConfig(name=DEFAULT_QUEUE))
    return queues


def load_queue_config(path: Path) -> dict[str, QueueConfig]:
    """Read and parse a ``queue.yaml``; a missing file means "only the default queue"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    return parse_queue_config(text)


def _parse_queue(entry: Any, index: int) -> QueueConfig | None:
    if not isinstance(entry, Mapping):
        raise ValueError(f"queue #{index + 1}: expected a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
        raise ValueError(f"queue #{index + 1}: field 'name' must match [A-Za-z0-9-]{{1,100}}, got {name!r}")
    unknown = set(entry) - _QUEUE_FIELDS
    if unknown:
        raise ValueError(f"queue {name!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    mode = entry.get("mode", "push")
    if mode == "pull":
        return None  # pull queues are not dispatched by anyone; they need no configuration here
    if mode != "push":
        raise ValueError(f"queue {name!r}: field 'mode' must be 'push' or 'pull', got {mode!r}")

    fields: dict[str, Any] = {"name": name}
    if "rate" in entry:
        fields["rate_per_second"] = _field(name, "rate", entry["rate"], parse_rate)
        if fields["rate_per_second"] < 0:
            raise ValueError(f"queue {name!r}: field 'rate' must not be negative")
    if "bucket_size" in entry:
        fields["bucket_size"] = _int_field(name, "bucket_size", entry["bucket_size"], minimum=1)
    if entry.get("max_concurrent_requests") is not None:
        fields["max_concurrent_requests"] = _int_field(
            name, "max_concurrent_requests", entry["max_concurrent_requests"], minimum=1
        )
    if entry.get("target") is not None:
        fields["target"] = str(entry["target"])
    if "dispatch_deadline" in entry:
        deadline = _field(name, "dispatch_deadline", entry["dispatch_deadline"], _duration)
        if deadline <= timedelta(0):
            raise ValueError(f"queue {name!r}: field 'dispatch_deadline' must be positive")
        fields["dispatch_deadline"] = deadline
    if entry.get("retry_parameters") is not None:
        fields["retry"] = _parse_retry(name, entry["retry_parameters"])
    return QueueConfig(**fields)


def _parse_retry(queue: str, params: Any) -> RetryConfig:
    if not isinstance(params, Mapping):
        raise ValueError(f"queue {queue!r}: field 'retry_parameters' must be a mapping")
    unknown = set(params) - _RETRY_FIELDS
    if unknown:
        raise ValueError(
            f"queue {queue!r}: unknown field(s) in retry_parameters: {', '.join(sorted(map(str, unknown)))}"
        )
    fields: dict[str, Any] = {}
    if params.get("task_retry_limit") is not None:
        fields["task_retry_limit"] = _int_field(queue, "task_retry_limit", params["task_retry_limit"], minimum=0)
    if params.get("task_age_limit") is not None:
        age = _field(queue, "task_age_limit", params["task_age_limit"], parse_age)
        if age <= timedelta(0):
            raise ValueError(f"queue {queue!r}: field 'task_age_limit' must be positive")
        fields["task_age_limit"] = age
    for key in ("min_backoff_seconds", "max_backoff_seconds"):
        if params.get(key) is not None:
            fields[key] = _float_field(queue, key, params[key])
    if params.get("max_doublings") is not None:
        fields["max_doublings"] = _int_field(queue, "max_doublings", params["max_doublings"], minimum=0)
    retry = RetryConfig(**fields)
    if retry.max_backoff_seconds < retry.min_backoff_seconds:
        raise ValueError(
            f"queue {queue!r}: field 'max_backoff_seconds' ({retry.max_backoff_seconds}) is below "
            f"'min_backoff_seconds' ({retry.min_backoff_seconds})"
        )
    return retry


def _duration(value: Any) -> timedelta:
    """A duration string, or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return parse_age(value)


def _field(queue: str, key: str, value: Any, parse: Any) -> Any:
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"queue {queue!r}: field {key!r}: {exc}") from None


def _int_field(queue: str, key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"queue {queue!r}: field {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"queue {queue!r}: field {key!r} must be at least {minimum}, got {value}")
    return value


def _float_field(queue: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"queue {queue!r}: field {key!r} must be a non-negative number, got {value!r}")
    return float(value)
