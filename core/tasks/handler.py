"""The ``TaskHandler`` module, mounted at ``/_tasks``: HTTP in, executor, HTTP status out.

Every route verifies its request before anything runs; unverifiable requests get 4xx and never
5xx (Cloud Tasks retries 5xx). Outcome → status is the mapping of :mod:`core.tasks.errors`.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Response, request

from core.module import Module, exposed
from core.tasks import executor
from core.tasks.runtime import get_runtime

log = logging.getLogger(__name__)


def outcome_response(outcome: executor.Outcome) -> Response:
    headers = {"X-Task-Outcome": "ok" if outcome.error is None else type(outcome.error).__name__}
    return Response(outcome.message + "\n", status=outcome.status, mimetype="text/plain", headers=headers)


def run_task_request(*kinds: str) -> Response:
    """Hand the current Flask request to the executor."""
    outcome = executor.execute(get_runtime(), method=request.method, path=request.path,
                               headers=request.headers, body=request.get_data(cache=False),
                               expected_kinds=kinds or None)
    return outcome_response(outcome)


class TaskHandler(Module):
    """Task Handler: runs queued tasks (deferred calls, query-iterator chunks) and cron pings."""

    #: ViUR's name: from this retry on, each failure is logged as an error and mailed once.
    retryCountWarningThreshold = executor.RETRY_WARNING_THRESHOLD  # noqa: N815 - ViUR's name

    @exposed(methods=("POST",))
    def deferred(self, *args: Any, **kwargs: Any) -> Response:
        """Run one deferred call."""
        return run_task_request("deferred")
