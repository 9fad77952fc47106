"""A task's trace: carried from the enqueuing request to the run, with OpenTelemetry spans when installed.

:func:`enqueue_trace` is what a new task carries in its envelope: the caller's trace
(``current.trace``). When OpenTelemetry is installed (the ``otel`` extra) it also records a
``PRODUCER`` span per enqueue, a child of the caller's span, and the task carries that span.
:func:`run_span` restores the carried trace as ``current.trace`` for the run; with OpenTelemetry
the run is a ``CONSUMER`` span in the same trace, a child of the enqueue span and linked to it.
Without OpenTelemetry, or before the app configures a tracer provider, only the trace travels;
nothing here needs it at import.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from core import current
from core.tasks import message
from core.trace import TraceContext

otel: ModuleType | None  # None when the optional extra is not installed
try:
    from opentelemetry import trace as otel
except ImportError:  # the optional extra is not installed: traces travel without spans
    otel = None

TRACER_NAME = "core.tasks"


def _carried(envelope: message.Envelope) -> TraceContext | None:
    return TraceContext.from_env(envelope.env.get("trace") if isinstance(envelope.env, dict) else None)


def run_trace(envelope: message.Envelope) -> TraceContext | None:
    """The trace a task runs in: the one its envelope carries from the enqueue, else the entry's."""
    carried = _carried(envelope)
    return carried if carried is not None else current.trace.get()


def _tracer() -> Any:
    """The tracer when the app configured OpenTelemetry, else ``None`` (no-op spans cost time, say nothing)."""
    if otel is None:
        return None
    provider = otel.get_tracer_provider()
    if isinstance(provider, (otel.ProxyTracerProvider, otel.NoOpTracerProvider)):
        return None
    return provider.get_tracer(TRACER_NAME)


class TracerLookup:
    """An app's answer to :func:`_tracer` for its enqueues, so a send does not ask OpenTelemetry each time.

    The tracer of a configured provider is kept (OpenTelemetry lets a process set its provider once);
    while none is configured the answer is looked up again every :attr:`recheck` seconds, as the
    metrics look for a meter provider: one configured after the app was built is found then.
    """

    recheck = 5.0

    def __init__(self) -> None:
        self._tracer: Any = None
        self._checked = -math.inf

    def tracer(self) -> Any:
        """The tracer, or ``None`` while OpenTelemetry is not installed or not configured."""
        if self._tracer is None and time.monotonic() - self._checked >= self.recheck:
            self._checked = time.monotonic()
            self._tracer = _tracer()
        return self._tracer if otel is not None else None


def _span_context(trace: TraceContext) -> Any:
    """The carried trace as a remote OpenTelemetry span context (a made-up span id if none is known)."""
    assert otel is not None  # only reached once _tracer() found OpenTelemetry
    span_id = int(trace.span_id, 16) if trace.span_id else random.getrandbits(64) or 1
    flags = otel.TraceFlags(otel.TraceFlags.SAMPLED if trace.sampled else otel.TraceFlags.DEFAULT)
    return otel.SpanContext(int(trace.trace_id, 16), span_id, is_remote=True, trace_flags=flags)


def _from_span(span: Any, fallback: TraceContext | None) -> TraceContext | None:
    assert otel is not None  # only reached once _tracer() found OpenTelemetry
    context = span.get_span_context()
    if not context.is_valid:
        return fallback
    return TraceContext(otel.format_trace_id(context.trace_id), otel.format_span_id(context.span_id),
                        context.trace_flags.sampled)


def _remote(trace: TraceContext | None) -> Any:
    """An OpenTelemetry context whose parent is ``trace`` (``None``: the active context)."""
    if trace is None:
        return None
    assert otel is not None  # only reached once _tracer() found OpenTelemetry
    return otel.set_span_in_context(otel.NonRecordingSpan(_span_context(trace)))


def enqueue_trace(target: str, queue: str | None = None, *,
                  lookup: TracerLookup | None = None) -> dict[str, Any] | None:
    """The trace a task deferred now carries (``None`` outside any trace and without OpenTelemetry).

    ``lookup`` is the app's (:attr:`core.tasks.runtime.TaskRuntime.tracing`); without it OpenTelemetry is asked now.
    """
    trace = current.trace.get()
    tracer = lookup.tracer() if lookup is not None else _tracer()
    if tracer is not None:
        assert otel is not None  # only reached once _tracer() found OpenTelemetry
        attributes = {"tasks.target": target, **({"tasks.queue": queue} if queue else {})}
        # An active span (an instrumented app) is the parent; else the trace of the request's headers.
        active = otel.get_current_span().get_span_context().is_valid
        parent = None if active else _remote(trace)
        with tracer.start_as_current_span(f"enqueue {target}", context=parent, kind=otel.SpanKind.PRODUCER,
                                          attributes=attributes) as span:
            trace = _from_span(span, trace)
    return trace.to_env() if trace is not None else None


@contextlib.contextmanager
def run_span(envelope: message.Envelope, target: str | None, *, lookup: TracerLookup | None = None) -> Iterator[None]:
    """Run the block in :func:`run_trace` (and, with OpenTelemetry, in a span linked to the enqueue).

    ``lookup`` is the app's (:attr:`TaskRuntime.tracing`); without one OpenTelemetry is asked now.
    """
    tracer = lookup.tracer() if lookup is not None else _tracer()
    if tracer is None:
        token = current.trace.set(run_trace(envelope))
        try:
            yield
        finally:
            current.trace.reset(token)
        return
    carried = _carried(envelope)
    trace = carried if carried is not None else current.trace.get()
    assert otel is not None  # only reached once _tracer() found OpenTelemetry
    links = [otel.Link(_span_context(carried))] if carried is not None and carried.span_id else []
    attributes = {"tasks.id": envelope.id, "tasks.kind": envelope.kind, "tasks.queue": envelope.queue,
                  "tasks.target": target or envelope.kind}
    with tracer.start_as_current_span(f"run {target or envelope.kind}", context=_remote(carried),
                                      kind=otel.SpanKind.CONSUMER, links=links, attributes=attributes) as span:
        token = current.trace.set(_from_span(span, trace))
        try:
            yield
        finally:
            current.trace.reset(token)
