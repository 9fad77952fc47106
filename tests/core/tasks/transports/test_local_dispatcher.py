"""The local dispatcher against a real HTTP server: headers, retries, limits, deadlines, framing."""
from __future__ import annotations

import datetime
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.tasks.errors import ConfigurationError
from core.tasks.queues import QueueConfig, RetryConfig
from core.tasks.transports.base import EnqueueStatus, TaskRequest
from core.tasks.transports.local.dispatcher import LocalDispatcher
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

from .recording_server import Recorder

UTC = datetime.UTC
FAST_RETRY = RetryConfig(min_backoff_seconds=0.05, max_backoff_seconds=1.0, max_doublings=3)


def _queue(name: str = "default", **fields: Any) -> dict[str, QueueConfig]:
    fields.setdefault("rate_per_second", 500.0)
    fields.setdefault("bucket_size", 500)
    fields.setdefault("retry", FAST_RETRY)
    return {name: QueueConfig(name=name, **fields)}


def _enqueue(store: LocalQueueStore, *requests: TaskRequest) -> list[str]:
    results = LocalTransport(store).enqueue_many(list(requests))
    assert all(r.status is EnqueueStatus.CREATED for r in results), results
    return [str(r.queue_task_name) for r in results]


def _task(path: str, **fields: Any) -> TaskRequest:
    fields.setdefault("queue", "default")
    fields.setdefault("body", b"{}")
    return TaskRequest(path=path, **fields)


def test_push_carries_request_and_app_engine_headers(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, _task("/ok", name="welcome-1", body=b'{"user": 7}',
                          headers={"Content-Type": "application/json", "X-Trace": "abc"}))
    [stored] = store.tasks()
    dispatcher = LocalDispatcher(store, recorder.url, _queue())
    assert dispatcher.run_until_idle(timeout=20) == 1

    [call] = recorder.calls
    assert (call.method, call.path, call.body) == ("POST", "/ok", b'{"user": 7}')
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["X-Trace"] == "abc"
    assert call.headers["X-Appengine-Queuename"] == "default"
    assert call.headers["X-Appengine-Taskname"] == "welcome-1"
    assert call.headers["X-Appengine-Taskretrycount"] == "0"
    assert call.headers["X-Appengine-Taskexecutioncount"] == "0"
    assert "X-Appengine-Taskpreviousresponse" not in call.headers
    assert call.headers["X-Appengine-Tasketa"] == f"{stored.eta.timestamp():.6f}"
    assert call.headers["User-Agent"].startswith("AppEngine-Google")
    assert store.pending() == 0 and store.tasks() == [] and store.failed() == []
    assert (dispatcher.stats.attempts, dispatcher.stats.succeeded) == (1, 1)


def test_unnamed_tasks_get_distinct_numeric_names_and_get_requests_no_body(
    store: LocalQueueStore, recorder: Recorder
) -> None:
    names = _enqueue(store, *(_task("/ok") for _ in range(5)), _task("/ok", method="GET", body=b""))
    LocalDispatcher(store, recorder.url, _queue()).run_until_idle(timeout=20)
    received = [c.headers["X-Appengine-Taskname"] for c in recorder.calls]
    assert sorted(received) == sorted(names) and len(set(received)) == 6
    [get] = [c for c in recorder.calls if c.method == "GET"]
    assert get.body == b"" and "Content-Length" not in get.headers


def test_retries_with_backoff_until_success(store: LocalQueueStore, recorder: Recorder) -> None:
    retry = RetryConfig(min_backoff_seconds=0.2, max_backoff_seconds=10, max_doublings=5)
    _enqueue(store, _task("/fail/2/k", name="flaky"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(retry=retry))
    dispatcher.run_until_idle(timeout=30, wait_scheduled=True)

    calls = recorder.calls_to("/fail/")
    assert len(calls) == 3
    assert [c.headers["X-Appengine-Taskretrycount"] for c in calls] == ["0", "1", "2"]
    assert [c.headers["X-Appengine-Taskexecutioncount"] for c in calls] == ["0", "1", "2"]
    assert [c.headers.get("X-Appengine-Taskpreviousresponse") for c in calls] == [None, "500", "500"]
    # Backoff: the second retry waits twice as long as the first (lower bounds only).
    assert calls[1].received - calls[0].received >= 0.2 - 0.01
    assert calls[2].received - calls[1].received >= 0.4 - 0.01
    # The ETA header follows the retry's schedule time.
    assert float(calls[2].headers["X-Appengine-Tasketa"]) > float(calls[1].headers["X-Appengine-Tasketa"])
    assert store.pending() == 0 and store.failed() == []
    assert (dispatcher.stats.retried, dispatcher.stats.succeeded) == (2, 1)


def test_503_is_not_counted_as_an_execution(store: LocalQueueStore, recorder: Recorder) -> None:
    recorder.sequences["k"] = [503, 500, 200]
    _enqueue(store, _task("/sequence/k"))
    LocalDispatcher(store, recorder.url, _queue()).run_until_idle(timeout=20, wait_scheduled=True)
    calls = recorder.calls_to("/sequence/k")
    assert [c.headers["X-Appengine-Taskretrycount"] for c in calls] == ["0", "1", "2"]
    assert [c.headers["X-Appengine-Taskexecutioncount"] for c in calls] == ["0", "0", "1"]
    assert [c.headers.get("X-Appengine-Taskpreviousresponse") for c in calls] == [None, "503", "500"]


def test_retry_limit_keeps_task_as_failed(store: LocalQueueStore, recorder: Recorder) -> None:
    retry = RetryConfig(task_retry_limit=2, min_backoff_seconds=0.01, max_backoff_seconds=0.05)
    _enqueue(store, _task("/status/500", name="doomed"), _task("/ok"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(retry=retry))
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)

    assert len(recorder.calls_to("/status/500")) == 3  # one attempt plus two retries
    [failed] = dispatcher.failed()
    assert (failed.name, failed.state, failed.retry_count, failed.execution_count) == ("doomed", "failed", 3, 3)
    assert failed.last_status == 500 and failed.last_error == "HTTP 500: status 500"
    assert failed.first_attempt is not None
    assert dispatcher.pending() == 0 and dispatcher.stats.failed == 1
    # A failed task is kept but never pushed again, and its name stays taken.
    assert dispatcher.run_until_idle(timeout=10, wait_scheduled=True) == 0
    [dup] = LocalTransport(store).enqueue_many([_task("/ok", name="doomed")])
    assert dup.status is EnqueueStatus.DUPLICATE
    # Requeued, it starts afresh: three more attempts before it fails again.
    assert store.requeue_failed([failed.id]) == 1
    assert dispatcher.run_until_idle(timeout=10, wait_scheduled=True) == 3
    assert len(recorder.calls_to("/status/500")) == 6
    assert [t.retry_count for t in store.failed()] == [3]


def test_age_and_retry_limits_must_both_be_reached(store: LocalQueueStore, recorder: Recorder) -> None:
    retry = RetryConfig(task_retry_limit=1, task_age_limit=datetime.timedelta(seconds=0.5),
                        min_backoff_seconds=0.05, max_backoff_seconds=0.1, max_doublings=1)
    _enqueue(store, _task("/status/500"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(retry=retry))
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)
    calls = recorder.calls_to("/status/500")
    assert len(calls) > 2  # the retry limit alone would have stopped after two
    [failed] = store.failed()
    assert failed.retry_count == len(calls)


def test_eta_is_honoured(store: LocalQueueStore, recorder: Recorder) -> None:
    eta = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.6)
    _enqueue(store, _task("/ok", eta=eta))
    dispatcher = LocalDispatcher(store, recorder.url, _queue())
    assert dispatcher.run_until_idle(timeout=10) == 0  # not due yet
    assert store.pending() == 1 and recorder.calls == []
    dispatcher.run_until_idle(timeout=10, wait_scheduled=True)
    [call] = recorder.calls
    assert call.received >= eta.timestamp()
    assert call.headers["X-Appengine-Tasketa"] == f"{eta.timestamp():.6f}"


def test_max_concurrent_requests_is_honoured(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, *(_task("/slow/30.0") for _ in range(9)))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(max_concurrent_requests=3))
    dispatcher.start()
    try:
        recorder.wait_calls("/slow/", 3)
        time.sleep(0.3)  # room for a fourth request, which must not come
        assert len(recorder.calls) == 3 and recorder.current == 3
        recorder.release.set()
        recorder.wait_calls("/slow/", 9)
    finally:
        dispatcher.stop(timeout=10)
    assert recorder.max_concurrent == 3
    assert store.pending() == 0


def test_max_connections_caps_all_queues(store: LocalQueueStore, recorder: Recorder) -> None:
    queues = {**_queue("a"), **_queue("b")}
    _enqueue(store, *(_task("/slow/30.0", queue=q) for q in "abab"))
    dispatcher = LocalDispatcher(store, recorder.url, queues, max_connections=2)
    dispatcher.start()
    try:
        recorder.wait_calls("/slow/", 2)
        time.sleep(0.3)
        assert len(recorder.calls) == 2
        recorder.release.set()
        recorder.wait_calls("/slow/", 4)
    finally:
        dispatcher.stop(timeout=10)
    assert recorder.max_concurrent == 2


def test_rate_limit_is_honoured(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, *(_task("/ok") for _ in range(8)))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(rate_per_second=10.0, bucket_size=2))
    dispatcher.run_until_idle(timeout=20)
    times = sorted(c.received for c in recorder.calls)
    assert len(times) == 8
    # A bucket of 2 lets two go at once, then one per 0.1 s: at least 0.6 s from first to last.
    # (A lower bound, loose by the time the first request may have spent reaching the server.)
    assert times[-1] - times[0] >= 0.6 - 0.15


def test_rate_limits_can_be_switched_off(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, *(_task("/ok") for _ in range(20)))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(rate_per_second=0.5, bucket_size=1), rate_limits=False)
    assert dispatcher.run_until_idle(timeout=20) == 20


def test_paused_queue_is_not_dispatched(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, _task("/ok"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(rate_per_second=0.0))
    assert dispatcher.run_until_idle(timeout=10, wait_scheduled=True) == 0
    assert store.pending() == 1 and recorder.calls == []


def test_dispatch_deadline_times_out_and_retries(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, _task("/slow-first/30.0/k"))
    queues = _queue(dispatch_deadline=datetime.timedelta(seconds=1))
    dispatcher = LocalDispatcher(store, recorder.url, queues)
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)
    calls = recorder.calls_to("/slow-first/")
    assert len(calls) == 2
    assert [c.headers["X-Appengine-Taskretrycount"] for c in calls] == ["0", "1"]
    # A timeout got no response, so it is not an execution.
    assert [c.headers["X-Appengine-Taskexecutioncount"] for c in calls] == ["0", "0"]
    assert dispatcher.stats.timeouts == 1 and store.pending() == 0


def test_named_task_name_is_taken_for_the_retention_window(tmp_path: Any, recorder: Recorder) -> None:
    kept = LocalQueueStore(tmp_path / "kept.db")
    _enqueue(kept, _task("/ok", name="report-2026-10"))
    LocalDispatcher(kept, recorder.url, _queue()).run_until_idle(timeout=10)
    assert kept.pending() == 0 and len(recorder.calls) == 1
    [dup] = LocalTransport(kept).enqueue_many([_task("/ok", name="report-2026-10")])
    assert dup.status is EnqueueStatus.DUPLICATE

    short = LocalQueueStore(tmp_path / "short.db", name_retention=datetime.timedelta(0))
    _enqueue(short, _task("/ok", name="report-2026-10"))
    LocalDispatcher(short, recorder.url, _queue()).run_until_idle(timeout=10)
    [again] = LocalTransport(short).enqueue_many([_task("/ok", name="report-2026-10")])
    assert again.status is EnqueueStatus.CREATED
    kept.close()
    short.close()


def test_chunked_response_of_unknown_length(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, *(_task("/stream") for _ in range(3)), _task("/ok"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(), max_connections=1)
    assert dispatcher.run_until_idle(timeout=20) == 4
    assert dispatcher.stats.succeeded == 4 and store.pending() == 0


def test_unconfigured_queue_uses_defaults(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, _task("/ok", queue="elsewhere"))
    LocalDispatcher(store, recorder.url, _queue()).run_until_idle(timeout=10)
    [call] = recorder.calls
    assert call.headers["X-Appengine-Queuename"] == "elsewhere"


def test_connection_refused_is_retried(store: LocalQueueStore) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    retry = RetryConfig(task_retry_limit=1, min_backoff_seconds=0.01)
    _enqueue(store, _task("/ok"))
    dispatcher = LocalDispatcher(store, f"http://127.0.0.1:{port}", _queue(retry=retry))
    dispatcher.run_until_idle(timeout=10, wait_scheduled=True)
    [failed] = store.failed()
    assert failed.retry_count == 2 and failed.execution_count == 0 and failed.last_status is None
    assert failed.last_error and "refused" in failed.last_error.lower()


def test_one_dispatcher_per_store(store: LocalQueueStore, recorder: Recorder) -> None:
    first = LocalDispatcher(store, recorder.url, _queue())
    first.start()
    try:
        second = LocalDispatcher(LocalQueueStore(store.path), recorder.url, _queue())
        with pytest.raises(ConfigurationError):
            second.start()
        with pytest.raises(ConfigurationError):
            second.run_until_idle(timeout=1)
    finally:
        first.stop()
    # Once stopped, another may take over.
    LocalDispatcher(store, recorder.url, _queue()).run_until_idle(timeout=5)


def test_started_dispatcher_picks_up_new_tasks(store: LocalQueueStore, recorder: Recorder) -> None:
    dispatcher = LocalDispatcher(store, recorder.url, _queue())
    dispatcher.start()
    try:
        for round_ in range(3):
            _enqueue(store, _task("/ok", body=str(round_).encode()))
            recorder.wait_calls("/ok", round_ + 1, timeout=10)
    finally:
        dispatcher.stop()
    assert [c.body for c in recorder.calls] == [b"0", b"1", b"2"]
    dispatcher.start()  # a stopped dispatcher can start again
    try:
        _enqueue(store, _task("/ok", body=b"3"))
        recorder.wait_calls("/ok", 4, timeout=10)
    finally:
        dispatcher.stop()


def test_stop_gives_back_unfinished_tasks(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, *(_task("/slow/30.0", body=str(i).encode()) for i in range(4)))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(max_concurrent_requests=1))
    dispatcher.start()
    recorder.wait_calls("/slow/", 1)
    dispatcher.stop(timeout=0.2)  # the push in flight does not finish in time
    assert dispatcher.counts()["default"] == {"queued": 4, "leased": 0, "failed": 0}
    recorder.release.set()
    assert LocalDispatcher(store, recorder.url, _queue()).run_until_idle(timeout=20) == 4
    assert store.pending() == 0


# --- response framing, from a raw socket server -------------------------------------------------

class RawServer:
    """Answers every request with canned bytes, written one byte at a time.

    With ``keep_alive`` it serves further requests on the same connection; otherwise it closes
    the connection after each answer, whatever the answer said.
    """

    def __init__(self, response: bytes, *, keep_alive: bool = False) -> None:
        self.response = response
        self.keep_alive = keep_alive
        self.requests = 0
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buffer += chunk
                    if b"\r\n\r\n" not in buffer:
                        break
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = 0
                    for line in head.lower().split(b"\r\n"):
                        if line.startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    while len(buffer) < length:
                        buffer += conn.recv(65536)
                    buffer = buffer[length:]
                    self.requests += 1
                    for i in range(len(self.response)):
                        conn.sendall(self.response[i : i + 1])
                    if not self.keep_alive:
                        break

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    server = RawServer(request.param)
    yield server
    server.close()


OK_FRAMINGS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    "read-until-close": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome body until EOF",
    "chunked-with-trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ),
    "interim-100-then-204": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    # No "Connection: close", yet the server closes after each answer: pooled connections go stale.
    "silent-close": b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("raw_server", list(OK_FRAMINGS.values()), ids=list(OK_FRAMINGS), indirect=True)
def test_response_framings_complete(store: LocalQueueStore, raw_server: RawServer) -> None:
    _enqueue(store, *(_task("/x") for _ in range(5)))
    dispatcher = LocalDispatcher(store, raw_server.url, _queue(), max_connections=1)
    dispatcher.run_until_idle(timeout=20)
    assert dispatcher.stats.succeeded == 5 and dispatcher.stats.retried == 0
    assert raw_server.requests == 5 and store.pending() == 0


BAD_RESPONSES = {
    "not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
    "cut-short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a bit",
    "no-head": b"",
}


@pytest.mark.parametrize("raw_server", list(BAD_RESPONSES.values()), ids=list(BAD_RESPONSES), indirect=True)
def test_broken_responses_are_retried(store: LocalQueueStore, raw_server: RawServer) -> None:
    retry = RetryConfig(task_retry_limit=1, min_backoff_seconds=0.01)
    _enqueue(store, _task("/x"))
    dispatcher = LocalDispatcher(store, raw_server.url, _queue(retry=retry))
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)
    [failed] = store.failed()
    assert failed.retry_count == 2 and failed.last_status is None and failed.last_error
    assert dispatcher.stats.succeeded == 0


def test_keep_alive_connections_are_reused(store: LocalQueueStore) -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", keep_alive=True)
    try:
        _enqueue(store, *(_task("/x", body=b"x" * n) for n in range(10)))
        dispatcher = LocalDispatcher(store, server.url, _queue(), max_connections=1)
        assert dispatcher.run_until_idle(timeout=20) == 10
    finally:
        server.close()
    assert (server.requests, server.connections, dispatcher.stats.connections) == (10, 1, 1)
    assert dispatcher.stats.succeeded == 10


def test_poll_fallback_where_there_is_no_epoll(
    store: LocalQueueStore, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(select, "epoll")
    recorder.sequences["k"] = [500, 200]
    _enqueue(store, *(_task("/ok") for _ in range(20)), _task("/sequence/k"))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(), max_connections=4)
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)
    assert dispatcher.stats.succeeded == 21 and dispatcher.stats.retried == 1
    assert store.pending() == 0


def test_base_url_with_localhost_and_a_path_prefix(store: LocalQueueStore, recorder: Recorder) -> None:
    port = recorder.url.rsplit(":", 1)[1]
    _enqueue(store, _task("/201"))
    LocalDispatcher(store, f"http://localhost:{port}/status", _queue()).run_until_idle(timeout=10)
    [call] = recorder.calls
    assert call.path == "/status/201" and call.headers["Host"] == f"localhost:{port}"
    assert store.pending() == 0
    with pytest.raises(ValueError):
        LocalDispatcher(store, "https://example.invalid", _queue())


def test_a_task_deadline_overrides_the_queue_deadline(store: LocalQueueStore, recorder: Recorder) -> None:
    _enqueue(store, _task("/slow-first/30.0/d", dispatch_deadline=datetime.timedelta(seconds=1)))
    dispatcher = LocalDispatcher(store, recorder.url, _queue(dispatch_deadline=datetime.timedelta(minutes=10)))
    dispatcher.run_until_idle(timeout=20, wait_scheduled=True)
    assert len(recorder.calls_to("/slow-first/")) == 2 and dispatcher.stats.timeouts == 1


def test_a_queued_task_can_be_deleted_before_it_is_pushed(store: LocalQueueStore, recorder: Recorder) -> None:
    transport = LocalTransport(store)
    [name] = _enqueue(store, _task("/ok", eta=datetime.datetime.now(UTC) + datetime.timedelta(hours=1)))
    _enqueue(store, _task("/ok", name="kept"))
    assert transport.delete_task("default", name) is True
    assert transport.delete_task("default", name) is False  # gone already
    assert transport.delete_task("other", "kept") is False  # names are per queue
    assert [t.name for t in store.tasks()] == ["kept"]
    store.lease_due("default", time.time(), 10)  # being pushed: the handler's revocation check decides
    assert transport.delete_task("default", "kept") is False and store.pending() == 1
