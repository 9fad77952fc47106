"""Every route of the example app and of ``/_tasks``, with hostile input: never a 5xx.

Random methods, path segments, query and form fields (the handlers' own argument names among
them), headers and bodies (huge, non-UTF-8), anonymous and signed in. An anonymous request to a
task route never queues a task. The example count is bounded so the test stays fast in CI.
"""
from __future__ import annotations

import inspect
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.app import runtime_of
from example.users import create_user
from tests.conftest import TaskQueue

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
HEADER_NAMES = ("Accept", "Accept-Language", "Content-Type", "Cookie", "Authorization", "Referer", "Origin",
                "X-Tasks-Signature", "X-AppEngine-QueueName", "X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
                "X-AppEngine-TaskExecutionCount", "X-CloudTasks-TaskExecutionCount", "X-Appengine-Cron",
                "X-Requested-With", "X-CSRFToken", "If-None-Match", "Range")
COMMON_FIELDS = ("next", "format", "lang", "run", "csrf_token", "month", "count", "name", "password", "year",
                 "cursor", "page", "json", "action", "v", "id", "kind", "payload")

#: Values hostile to parsers: empty, long, non-ASCII, control characters, numbers that overflow.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "0", "-1", "1" * 400, "1e999", "NaN", "null", "[]", "{}", "\x00", "\r\nX: y", "/%09/evil",
                     "//evil.example", "../..", "%ff%fe", "é" * 50, "2026-10", "admin", "__key__", "json"]),
    st.text(min_size=1500, max_size=1700, alphabet="xé\n"),
)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
    st.sampled_from(["application/json", "text/html", "multipart/form-data; boundary=x", "t=1,v1=zz",
                     "application/x-www-form-urlencoded", "de-DE,de;q=0.9", "true", "1" * 400, "Bearer a.b.c"]),
    st.just("a" * 8000),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\xff\xfe\x00\x80", b"{", b'{"v": 1}', b"a=1&b=%ff", b"\x00" * 1000,
                     b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--x--\r\n"]),
    st.just(b"\x80" * 170_000),  # over the request size limit
)


def routes(app) -> list[str]:
    """Every URL rule of the app, with its ``<path:rest>`` part removed (segments are drawn)."""
    return sorted({re.sub(r"/?<[^>]+>", "", rule.rule) or "/" for rule in app.url_map.iter_rules()
                   if not rule.rule.startswith("/static")})


def argument_names(app) -> dict[str, list[str]]:
    """The parameter names of each exposed handler by its path: the fields most likely to collide."""
    names: dict[str, list[str]] = {}
    for path, module in runtime_of(app).modules.items():
        for name, handler, _ in module.exposed_methods():
            own = [n for n in inspect.signature(handler).parameters if n not in ("args", "kwargs")]
            names[f"/{path}/{name}"] = own
            if name == "index":
                names[f"/{path}" if path != "index" else "/"] = own
    return names


@pytest.fixture
def fuzz_client(app, client):
    create_user("admin", "admin-demo", admin=True)
    return client


@st.composite
def requests(draw, paths: list[str], arguments: dict[str, list[str]]):
    path = draw(st.sampled_from(paths))
    fields = sorted({*COMMON_FIELDS, *(n for own in arguments.values() for n in own)})
    segments = draw(st.lists(texts.filter(lambda s: s and not set(s) & set("/?#")), max_size=3))
    names = st.one_of(st.sampled_from(arguments.get(path) or fields), st.sampled_from(fields),
                      st.text(min_size=1, max_size=10))
    query = draw(st.dictionaries(names, texts, max_size=4))
    form = draw(st.one_of(st.none(), st.dictionaries(names, texts, max_size=4)))
    own = arguments.get(path)
    if own:  # the handler's own argument names, beside path segments that may fill them
        query.update(draw(st.dictionaries(st.sampled_from(own), texts, max_size=2)))
    return {
        "method": draw(st.sampled_from(METHODS)),
        "path": "/".join([path.rstrip("/"), *segments]) if segments else path,
        "query_string": query,
        "headers": draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4)),
        "data": form if form is not None else draw(bodies),
        "signed_in": draw(st.booleans()),
    }


def test_no_route_answers_5xx_and_anonymous_task_requests_queue_nothing(app, fuzz_client):
    paths, arguments = routes(app), argument_names(app)
    assert "/_tasks/deferred" in paths and "/invoices/close_month" in paths
    assert arguments["/_tasks/cron"][0] == "cronName" and arguments["/_tasks/execute"][0] == "taskID"
    queue = TaskQueue(app)

    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests(paths, arguments))
    def check(request):
        signed_in = request.pop("signed_in")
        with fuzz_client.session_transaction() as session:
            session.clear()
            if signed_in:
                session["user"] = "admin"
        queue.pending.clear()
        response = fuzz_client.open(**request)
        assert response.status_code < 500, (request, response.status_code, response.get_data()[:500])
        if not signed_in and request["path"].startswith("/_tasks"):
            assert queue.pending == [], request

    check()
