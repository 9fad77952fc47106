"""The trace a request or task belongs to, read from ``traceparent`` and ``X-Cloud-Trace-Context``.

Google's front ends (App Engine, Cloud Run, the load balancers) send both headers; a deferred
call carries the caller's trace in its signed envelope, so the task's logs and spans join the
request that deferred it. The headers come from outside: anything malformed is ignored, never
an error.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

_MAX_HEADER = 512
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
# W3C Trace Context: version-traceid-parentid-flags; later versions may append fields.
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
# Google's older header: TRACE_ID/SPAN_ID;o=OPTIONS, the span id in decimal, both parts optional.
_CLOUD_RE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]{1,2}))?$")


@dataclasses.dataclass(frozen=True)
class TraceContext:
    """A trace id (32 hex digits), the current span id (16 hex digits, if known) and the sampling flag."""

    trace_id: str
    span_id: str | None = None
    sampled: bool = False

    def __post_init__(self) -> None:
        if not _HEX32.match(self.trace_id) or set(self.trace_id) == {"0"}:
            raise ValueError(f"not a trace id: {self.trace_id!r}")
        if self.span_id is not None and (not _HEX16.match(self.span_id) or set(self.span_id) == {"0"}):
            raise ValueError(f"not a span id: {self.span_id!r}")

    def to_env(self) -> dict[str, Any]:
        """The JSON form a task envelope carries."""
        return {"trace_id": self.trace_id, "span_id": self.span_id, "sampled": self.sampled}

    @classmethod
    def from_env(cls, value: Any) -> TraceContext | None:
        """The trace of an envelope's environment, or ``None`` if it has none or a malformed one."""
        if not isinstance(value, Mapping):
            return None
        trace_id, span_id, sampled = value.get("trace_id"), value.get("span_id"), value.get("sampled")
        if not isinstance(trace_id, str) or not (span_id is None or isinstance(span_id, str)):
            return None
        try:
            return cls(trace_id, span_id, sampled is True)
        except ValueError:
            return None

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` value (needs a span id)."""
        if self.span_id is None:
            return None
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def cloud_logging_trace(self, project: str) -> str:
        """``projects/<project>/traces/<trace id>``, as Cloud Logging's ``trace`` field wants it."""
        return f"projects/{project}/traces/{self.trace_id}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A W3C ``traceparent`` header, or ``None`` if it is missing or invalid."""
    if not value or len(value) > _MAX_HEADER:
        return None
    match = _TRACEPARENT_RE.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    try:
        return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))
    except ValueError:
        return None


def parse_cloud_trace_context(value: str | None) -> TraceContext | None:
    """An ``X-Cloud-Trace-Context`` header (``TRACE_ID/SPAN_ID;o=1``), or ``None`` if invalid."""
    if not value or len(value) > _MAX_HEADER:
        return None
    match = _CLOUD_RE.match(value.strip())
    if match is None:
        return None
    trace_id, span, options = match.groups()
    span_id = None
    if span is not None:
        number = int(span)
        if not 0 < number < 2**64:
            return None
        span_id = f"{number:016x}"
    try:
        return TraceContext(trace_id.lower(), span_id, options == "1")
    except ValueError:
        return None


def from_headers(headers: Mapping[str, str]) -> TraceContext | None:
    """The trace of a request: ``traceparent`` if valid, else ``X-Cloud-Trace-Context``, else ``None``."""
    found: dict[str, str] = {}
    for key, value in headers.items():
        name = str(key).lower()
        if name in ("traceparent", "x-cloud-trace-context") and name not in found:
            found[name] = str(value)
    return from_values(found.get("traceparent"), found.get("x-cloud-trace-context"))


def from_environ(environ: Mapping[str, Any]) -> TraceContext | None:
    """:func:`from_headers` of a WSGI environ, read by its two keys."""
    return from_values(environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_X_CLOUD_TRACE_CONTEXT"))


def from_values(traceparent: str | None, cloud_trace_context: str | None) -> TraceContext | None:
    """:func:`from_headers` for the two header values already looked up."""
    if not traceparent and not cloud_trace_context:
        return None
    return parse_traceparent(traceparent) or parse_cloud_trace_context(cloud_trace_context)
