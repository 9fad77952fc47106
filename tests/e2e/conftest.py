"""Fixtures for end-to-end tests: ``make_stack`` and ``live_stack`` come from ``core.testing``."""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

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


def sign_in(session: requests.Session, url: str, name: str, password: str) -> requests.Response:
    """Sign in through the example's form (its CSRF token first); returns the 303 to the next page."""
    form = session.get(url + "/user/login")
    match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert match, "the sign-in page has no CSRF token"
    response = session.post(url + "/user/login", data={"name": name, "password": password, "csrf_token": match[1]},
                            allow_redirects=False)
    assert response.status_code == 303, response.text
    return response
