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
