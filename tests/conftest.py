"""Fixtures shared by the whole suite: the real Datastore emulator, settings, app and client.

The emulator starts once per session on a free port and is wiped before each test that uses it.
If it cannot start, every test that needs it errors: nothing is skipped.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from core import db
from core.config import Settings
from deploy.datastore_emulator import DatastoreEmulator, start_datastore_emulator


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[DatastoreEmulator]:
    emulator = start_datastore_emulator()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def settings(datastore_emulator: DatastoreEmulator, tmp_path) -> Settings:
    """Settings for one test: the emulator, an inline queue and fixed secrets."""
    return Settings(
        project="test-project",
        datastore_emulator_host=datastore_emulator.host,
        tasks_backend="inline",
        tasks_secret="test-task-secret",
        secret_key="test-secret-key",
        local_data_dir=tmp_path / "local-data",
    )


@pytest.fixture
def datastore(datastore_emulator: DatastoreEmulator, settings: Settings) -> Iterator[db.Datastore]:
    """A wiped emulator, configured as the active store."""
    datastore_emulator.reset()
    store = db.configure(settings)
    yield store


class TaskQueue:
    """The in-process queue of one test app: ``run_pending()`` drains it through the real handler."""

    def __init__(self, app, transport=None) -> None:
        from core.app import runtime_of
        from core.tasks.transports.inline import InlineTransport

        self.app = app
        transport = transport if transport is not None else runtime_of(app).transport
        assert isinstance(transport, InlineTransport), "the test app must use the inline transport"
        self.transport = transport

    @property
    def pending(self):
        return self.transport.pending

    def run_pending(self, **kwargs):
        return self.transport.run_pending(self.app, **kwargs)


@pytest.fixture
def make_app(settings, datastore):
    """Build a test app from a module mapping (inline queue, emulator, fixed secrets)."""
    from core import create_app

    def build(modules=None, **kwargs):
        kwargs.setdefault("startup_tasks", False)
        app = create_app(modules or {}, settings=kwargs.pop("settings", settings), **kwargs)
        app.testing = True
        return app

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def task_queue(app) -> TaskQueue:
    return TaskQueue(app)
