"""The example app (``main:app``'s modules and users) on the test settings: inline queue, emulator."""
from __future__ import annotations

import pytest

from example import MODULES, SessionUsers
from tests.example.test_users import sign_in


@pytest.fixture
def app(make_app):
    return make_app(MODULES, users=SessionUsers(), languages=("en", "de"))


@pytest.fixture
def signed_in(client):
    """The client signed in as the demo administrator."""
    response = sign_in(client, "admin", "admin-demo")  # the sign-in page creates the demo users
    assert response.status_code == 303
    return client
