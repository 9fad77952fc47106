"""Reading ``traceparent`` and ``X-Cloud-Trace-Context``: valid values parse, anything else is ignored."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from core.trace import TraceContext, from_environ, from_headers, parse_cloud_trace_context, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_traceparent():
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == TraceContext(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceContext(TRACE, SPAN, False)
    # A later version may add fields; its flags' other bits are not ours.
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-03-more") == TraceContext(TRACE, SPAN, True)
    assert TraceContext(TRACE, SPAN, True).traceparent == f"00-{TRACE}-{SPAN}-01"


def test_cloud_trace_context():
    assert parse_cloud_trace_context(f"{TRACE}/1;o=1") == TraceContext(TRACE, "0000000000000001", True)
    assert parse_cloud_trace_context(f"{TRACE.upper()}/{2**64 - 1};o=0") == TraceContext(TRACE, "f" * 16, False)
    assert parse_cloud_trace_context(TRACE) == TraceContext(TRACE, None, False)
    assert parse_cloud_trace_context(f"{TRACE};o=1") == TraceContext(TRACE, None, True)


@pytest.mark.parametrize("value", [
    None, "", "garbage", f"00-{TRACE}-{SPAN}", f"00-{TRACE}-{SPAN}-01-extra", f"ff-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{TRACE[:-1]}-{SPAN}-01", f"00-{TRACE}-{SPAN}-zz", f"00-{TRACE}-{SPAN}-01" + " " * 600,
])
def test_malformed_traceparent_is_ignored(value):
    assert parse_traceparent(value) is None


@pytest.mark.parametrize("value", [
    None, "", "x", f"{TRACE}/0;o=1", f"{TRACE}/{2**64};o=1", f"{TRACE}/-1", f"{TRACE}/1;o=", f"{'0' * 32}/1;o=1",
    f"{TRACE}x/1", f"{TRACE}/1;o=1;junk", f"{TRACE}/{'9' * 25}", "/1;o=1",
])
def test_malformed_cloud_trace_context_is_ignored(value):
    assert parse_cloud_trace_context(value) is None


def test_headers_prefer_traceparent_and_fall_back():
    other = "0af7651916cd43dd8448eb211c80319c"
    both = Headers({"traceparent": f"00-{TRACE}-{SPAN}-01", "X-Cloud-Trace-Context": f"{other}/5;o=1"})
    assert from_headers(both) == TraceContext(TRACE, SPAN, True)
    broken = {"Traceparent": "nonsense", "x-cloud-trace-context": f"{other}/5;o=1"}
    assert from_headers(broken) == TraceContext(other, "0000000000000005", True)
    assert from_headers({"TRACEPARENT": "bad", "X-Cloud-Trace-Context": "bad"}) is None
    assert from_headers({}) is None


def test_an_environ_reads_like_its_headers():
    other = "0af7651916cd43dd8448eb211c80319c"
    environ = {"HTTP_TRACEPARENT": "nonsense", "HTTP_X_CLOUD_TRACE_CONTEXT": f"{other}/5;o=1", "PATH_INFO": "/"}
    assert from_environ(environ) == TraceContext(other, "0000000000000005", True)
    assert from_environ({"HTTP_TRACEPARENT": f"00-{TRACE}-{SPAN}-01"}) == TraceContext(TRACE, SPAN, True)
    assert from_environ({}) is None


def test_envelope_form_round_trips_and_rejects_garbage():
    trace = TraceContext(TRACE, SPAN, True)
    assert TraceContext.from_env(trace.to_env()) == trace
    assert TraceContext.from_env(TraceContext(TRACE).to_env()) == TraceContext(TRACE)
    for garbage in (None, "x", [], {"trace_id": 5}, {"trace_id": TRACE, "span_id": 7}, {"trace_id": "zz"},
                    {"trace_id": TRACE, "span_id": "short"}, {"trace_id": TRACE, "sampled": "yes"}):
        result = TraceContext.from_env(garbage)
        assert result is None or result == TraceContext(TRACE), garbage
    assert TraceContext.from_env({"trace_id": TRACE, "sampled": "yes"}).sampled is False


@given(st.text(max_size=80), st.text(max_size=80))
def test_no_header_value_raises(traceparent, cloud):
    result = from_headers({"traceparent": traceparent, "X-Cloud-Trace-Context": cloud})
    assert result is None or isinstance(result, TraceContext)
