"""Log lines as Cloud Logging reads them: one JSON object per line, grouped by trace.

On App Engine and Cloud Run every line written to stdout or stderr that is a JSON object becomes
a structured log entry: ``severity`` and ``message`` are its level and text, and
``logging.googleapis.com/trace`` / ``spanId`` put it under a trace, next to the request's own
log. :class:`CloudLoggingFormatter` writes such lines, taking the trace from ``current.trace``:
the request's, or in a task the one of the request that deferred it. :func:`install_logging`
adds a handler with it to the root logger when the settings ask for JSON (by default outside
local development; locally logs stay plain text unless ``LOG_FORMAT=json``).
"""
from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO, Any

from core import current
from core.config import Settings

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"
SOURCE_FIELD = "logging.googleapis.com/sourceLocation"
#: Marks the handler :func:`install_logging` added, so a second app in the process reuses it.
_HANDLER_MARK = "_core_cloud_logging"


def severity(levelno: int) -> str:
    """Cloud Logging's severity for a Python level (between two levels, the lower one)."""
    for level, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
                        (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG")):
        if levelno >= level:
            return name
    return "DEFAULT"


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one line of Cloud Logging structured JSON, with the current trace and task."""

    def __init__(self, project: str) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            # Error Reporting finds a traceback in the message text.
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": message,
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "logger": record.name,
            SOURCE_FIELD: {"file": record.pathname, "line": str(record.lineno), "function": record.funcName},
        }
        trace = current.trace.get()
        if trace is not None:
            entry[TRACE_FIELD] = trace.cloud_logging_trace(self.project)
            if trace.span_id is not None:
                entry[SPAN_FIELD] = trace.span_id
            entry[SAMPLED_FIELD] = trace.sampled
        task = current.task.get()
        if task is not None:
            labels = {"task_queue": task.queue, "task_name": task.task_name}
            entry[LABELS_FIELD] = {key: str(value) for key, value in labels.items() if value is not None}
        return json.dumps(entry, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (servers and test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def install_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler | None:
    """With JSON logs on, give the root logger one handler writing :class:`CloudLoggingFormatter` lines.

    Logging is per process, not per app: a second call reuses the handler. The root level is
    raised from Python's default (WARNING) to INFO so that a task's info lines are kept. Returns
    the handler, or ``None`` when the settings want plain text (then nothing is changed).
    """
    if not settings.log_json:
        return None
    root = logging.getLogger()
    formatter = CloudLoggingFormatter(settings.project)
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            handler.setFormatter(formatter)
            return handler
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    if root.level == logging.WARNING:
        root.setLevel(logging.INFO)
    return handler
