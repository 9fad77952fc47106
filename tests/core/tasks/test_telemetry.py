"""A task runs in the trace of the request that deferred it; with OpenTelemetry, in linked spans.

Deferred from a request through the real handler and the in-process queue. The span tests use the
OpenTelemetry SDK's in-memory exporter on the process-wide tracer provider (set once: OpenTelemetry
allows no other).
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace as otel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import current
from core.module import Module, exposed
from core.tasks import callDeferred, telemetry
from core.trace import TraceContext

ROOT = Path(__file__).resolve().parents[3]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
SEEN: list[TraceContext | None] = []


@callDeferred
def traced(depth: int = 0) -> None:
    SEEN.append(current.trace.get())
    if depth:
        traced(depth - 1)


@callDeferred
def fails() -> None:
    raise RuntimeError("transient")


class Traces(Module):
    @exposed
    def defer(self, depth: str = "0") -> str:
        traced(int(depth))
        return "queued"

    @exposed
    def failing(self) -> str:
        fails()
        return "queued"


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


@pytest.fixture
def app(make_app):
    return make_app({"traces": Traces})


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = otel.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        otel.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def without_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "otel", None)


@pytest.mark.parametrize("headers", [
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"},
    {"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)};o=1"},
])
def test_without_opentelemetry_the_task_runs_in_the_callers_trace(without_otel, client, task_queue, headers):
    assert client.get("/traces/defer", headers=headers).status_code == 200
    task_queue.run_pending()
    assert SEEN == [TraceContext(TRACE_ID, SPAN_ID, True)]


def test_a_task_deferred_by_a_task_stays_in_the_trace(without_otel, client, task_queue):
    client.get("/traces/defer?depth=1", headers={"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"})
    task_queue.run_pending()  # runs the tasks the tasks defer, too
    assert SEEN == [TraceContext(TRACE_ID, SPAN_ID, False)] * 2


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-zz-yy-01", "X-Cloud-Trace-Context": "../../etc"},
                                     {"traceparent": "x" * 10_000}])
def test_no_or_malformed_headers_run_the_task_without_a_trace(without_otel, client, task_queue, headers):
    assert client.get("/traces/defer", headers=headers).status_code == 200
    task_queue.run_pending()
    assert SEEN == [None]


def test_spans_per_enqueue_and_run_linked(spans, client, task_queue):
    client.get("/traces/defer?depth=1", headers={"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    task_queue.run_pending()  # runs the tasks the tasks defer, too
    finished = spans.get_finished_spans()
    enqueues = [s for s in finished if s.kind is otel.SpanKind.PRODUCER]
    runs = [s for s in finished if s.kind is otel.SpanKind.CONSUMER]
    assert [s.name for s in enqueues] == [f"enqueue {traced.target.name}"] * 2
    assert [s.name for s in runs] == [f"run {traced.target.name}"] * 2
    assert {otel.format_trace_id(s.context.trace_id) for s in finished} == {TRACE_ID}

    first_enqueue, second_enqueue = enqueues
    first_run, second_run = runs
    # The request's span is the first enqueue's parent; each run is a child of its enqueue and linked to it.
    assert otel.format_span_id(first_enqueue.parent.span_id) == SPAN_ID
    for enqueue, run in ((first_enqueue, first_run), (second_enqueue, second_run)):
        assert run.parent.span_id == enqueue.context.span_id
        assert [link.context.span_id for link in run.links] == [enqueue.context.span_id]
        assert run.attributes["tasks.target"] == traced.target.name
    # The task deferred inside the first run is enqueued from that run's span.
    assert second_enqueue.parent.span_id == first_run.context.span_id
    # In the task, current.trace is the run's span: log lines carry its span id.
    assert [otel.format_span_id(s.context.span_id) for s in runs] == [t.span_id for t in SEEN]


def test_a_failed_run_is_an_error_span(spans, client, task_queue):
    client.get("/traces/failing")
    task_queue.run_pending(raise_errors=False)
    [run] = [s for s in spans.get_finished_spans() if s.kind is otel.SpanKind.CONSUMER]
    assert run.status.status_code is otel.StatusCode.ERROR
    assert [event.name for event in run.events] == ["exception"]
    # No incoming trace: enqueue and run still share one.
    [enqueue] = [s for s in spans.get_finished_spans() if s.kind is otel.SpanKind.PRODUCER]
    assert enqueue.parent is None and run.context.trace_id == enqueue.context.trace_id


def test_the_trace_travels_without_opentelemetry_installed():
    # A fresh interpreter in which every opentelemetry import fails, as without the extra.
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import core.app\n"
        "from core import current, trace\n"
        "from core.tasks import message, telemetry\n"
        "assert telemetry.otel is None\n"
        "current.trace.set(trace.parse_traceparent('00-" + TRACE_ID + "-" + SPAN_ID + "-01'))\n"
        "env = {'trace': telemetry.enqueue_trace('t')}\n"
        "current.trace.set(None)\n"
        "with telemetry.run_span(message.Envelope(kind='deferred', payload={}, queue='q', env=env), 't'):\n"
        "    print(current.trace.get().span_id)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SPAN_ID


def test_an_apps_tracer_lookup_keeps_the_tracer_it_found_and_answers_none_without_opentelemetry(spans, monkeypatch):
    lookup = telemetry.TracerLookup()
    tracer = lookup.tracer()
    assert tracer is not None and lookup.tracer() is tracer
    monkeypatch.setattr(telemetry, "otel", None)
    assert lookup.tracer() is None
