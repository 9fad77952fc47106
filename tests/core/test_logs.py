"""Cloud Logging structured lines: severity, message, trace and span from ``current``, task labels."""
from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from core import current
from core.config import Settings
from core.logs import (
    SPAN_FIELD,
    TRACE_FIELD,
    CloudLoggingFormatter,
    install_logging,
    severity,
)
from core.tasks.auth.queue_headers import TaskInfo
from core.trace import TraceContext

TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)


def record(level: int = logging.INFO, msg: str = "hello %s", args: tuple = ("world",),
           exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("app.tasks", level, "/srv/app/tasks.py", 42, msg, args, exc_info, func="run")


def formatted(rec: logging.LogRecord) -> dict:
    line = CloudLoggingFormatter("my-project").format(rec)
    assert "\n" not in line
    return json.loads(line)


def test_a_line_outside_any_trace():
    entry = formatted(record(logging.WARNING))
    assert entry["severity"] == "WARNING" and entry["message"] == "hello world" and entry["logger"] == "app.tasks"
    assert entry["logging.googleapis.com/sourceLocation"] == {"file": "/srv/app/tasks.py", "line": "42",
                                                              "function": "run"}
    assert TRACE_FIELD not in entry and SPAN_FIELD not in entry


def test_a_line_in_a_trace_and_a_task():
    trace_token = current.trace.set(TRACE)
    task_token = current.task.set(TaskInfo(queue="mails", task_name="t-1"))
    try:
        entry = formatted(record())
    finally:
        current.task.reset(task_token)
        current.trace.reset(trace_token)
    assert entry[TRACE_FIELD] == "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry[SPAN_FIELD] == "00f067aa0ba902b7"
    assert entry["logging.googleapis.com/trace_sampled"] is True
    assert entry["logging.googleapis.com/labels"] == {"task_queue": "mails", "task_name": "t-1"}


def test_exceptions_travel_in_the_message():
    try:
        raise ValueError("broken thing")
    except ValueError:
        rec = record(logging.ERROR, "failed", (), exc_info=sys.exc_info())
    entry = formatted(rec)
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("failed\nTraceback") and "ValueError: broken thing" in entry["message"]


@pytest.mark.parametrize(("level", "name"), [(5, "DEFAULT"), (10, "DEBUG"), (15, "DEBUG"), (20, "INFO"),
                                             (30, "WARNING"), (40, "ERROR"), (50, "CRITICAL"), (60, "CRITICAL")])
def test_severity(level, name):
    assert severity(level) == name


def test_install_only_when_json_is_wanted():
    root = logging.getLogger()
    # An app built earlier in this process (with a production runtime) may have installed it already.
    for handler in [h for h in root.handlers if isinstance(h.formatter, CloudLoggingFormatter)]:
        root.removeHandler(handler)
    before = list(root.handlers)
    assert install_logging(Settings(runtime="local")) is None
    assert install_logging(Settings(runtime="cloudrun", log_format="text")) is None
    assert root.handlers == before

    stream = io.StringIO()
    level = root.level
    handler = install_logging(Settings(runtime="local", log_format="json", project="p1"), stream)
    try:
        assert handler is not None and root.handlers == [*before, handler]
        # A second app in the process reuses the handler.
        assert install_logging(Settings(runtime="appengine", project="p2")) is handler
        token = current.trace.set(TRACE)
        try:
            logging.getLogger("some.module").info("in a trace")
        finally:
            current.trace.reset(token)
        [line] = [json.loads(text) for text in stream.getvalue().splitlines() if "in a trace" in text]
        assert line[TRACE_FIELD] == f"projects/p2/traces/{TRACE.trace_id}" and line["severity"] == "INFO"
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_the_default_handler_follows_a_swapped_stderr(monkeypatch):
    root = logging.getLogger()
    handler = install_logging(Settings(runtime="cloudrun", project="p"))
    try:
        swapped = io.StringIO()
        monkeypatch.setattr(sys, "stderr", swapped)
        logging.getLogger("x").warning("after the swap")
        assert json.loads(swapped.getvalue().splitlines()[-1])["message"] == "after the swap"
    finally:
        root.removeHandler(handler)
