"""Fixtures for the local queue: a real HTTP server that records what it receives, and a store."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.tasks.transports.local.store import LocalQueueStore

from .recording_server import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalQueueStore]:
    queue_store = LocalQueueStore(tmp_path / "queue.db")
    try:
        yield queue_store
    finally:
        queue_store.close()
