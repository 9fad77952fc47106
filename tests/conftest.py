"""The suite's fixtures come from the task module's own pytest plugin, ``core.testing``.

It is registered through the ``pytest11`` entry point when the package is installed; naming it
here loads it from the checkout as well (pytest skips a plugin it already has).
"""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("core.testing")
pytest_plugins = ("core.testing",)

from core.testing import TaskQueue  # noqa: E402 - after the rewrite hook, for tests that build their own

__all__ = ["TaskQueue"]


@pytest.fixture
def app(make_app):
    """The library's own tests run on an app with no modules of its own (the tasks their files declare)."""
    return make_app()
