"""Fixtures for end-to-end tests: ``make_stack`` and ``live_stack`` come from ``core.testing``."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from core import db
from core.devserver.stack import LocalStack


@pytest.fixture
def probe_stack(make_stack) -> LocalStack:
    return make_stack(app_module="tests.e2e.app:app")


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, message: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def probe_runs(token: str) -> list[db.Entity]:
    return db.Query("probe_run").filter("token =", token).run()
