"""The example app (``main:app``'s modules and users) on the test settings: inline queue, emulator."""
from __future__ import annotations

import pytest

from example import MODULES, SessionUsers


@pytest.fixture
def app(make_app):
    return make_app(MODULES, users=SessionUsers(), languages=("en", "de"))


@pytest.fixture
def signed_in(client):
    """The client signed in as the demo administrator."""
    client.get("/user/login")  # creates the demo users on the emulator
    response = client.post("/user/login", data={"name": "admin", "password": "admin-demo"})
    assert response.status_code == 302
    return client
