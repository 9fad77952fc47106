"""Admin API calls: a refusal names the step it came at; a client made for the calls is closed."""
from __future__ import annotations

import pytest
from google.api_core import exceptions as api_exceptions

from core.tasks.errors import ConfigurationError
from core.tasks.google_admin import admin_calls


class Transport:
    closed = 0

    def close(self) -> None:
        self.closed += 1


class Api:
    def __init__(self) -> None:
        self.transport = Transport()


def test_a_refusal_names_the_step_and_keeps_the_cause() -> None:
    api = Api()
    with pytest.raises(ConfigurationError, match=r"^Cloud Tasks refused syncing queue q: 403 no") as caught:
        with admin_calls("Cloud Tasks", api, "listing", close=True) as step:
            step.now = "syncing queue q"
            raise api_exceptions.PermissionDenied("no")
    assert isinstance(caught.value.__cause__, api_exceptions.PermissionDenied)
    assert api.transport.closed == 1


def test_a_given_client_stays_open_and_other_errors_pass() -> None:
    api = Api()
    with pytest.raises(KeyError):
        with admin_calls("Cloud Scheduler", api, "listing", close=False):
            raise KeyError("x")
    with admin_calls("Cloud Scheduler", api, "listing", close=False):
        pass
    assert api.transport.closed == 0
