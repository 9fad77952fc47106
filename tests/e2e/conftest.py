"""Fixtures for end-to-end tests: a live stack (emulator + local queue + gunicorn) per test."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core import db
from core.config import Settings
from deploy.devserver import LocalStack


@pytest.fixture
def make_stack(datastore_emulator, tmp_path) -> Iterator[Callable[..., LocalStack]]:
    """Start a live stack on free ports; every one started is stopped after the test."""
    stacks: list[LocalStack] = []
    datastore_emulator.reset()

    def start(**kwargs: Any) -> LocalStack:
        kwargs.setdefault("data_dir", tmp_path / f"stack{len(stacks)}")
        kwargs.setdefault("log_dir", tmp_path / f"stack{len(stacks)}" / "logs")
        stack = LocalStack(datastore=datastore_emulator, persist=False, cron=kwargs.pop("cron", False), **kwargs)
        stacks.append(stack)
        stack.start()
        db.configure(Settings(project=stack.settings.project, datastore_emulator_host=datastore_emulator.host))
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture
def live_stack(make_stack) -> LocalStack:
    return make_stack()


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
