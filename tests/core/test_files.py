"""Local files holding secrets or signed task bodies are owner-only."""
from __future__ import annotations

import os
import stat

import pytest

from core.config import Settings
from core.tasks.transports.base import TaskRequest
from core.tasks.transports.local.store import LocalQueueStore


@pytest.fixture(autouse=True)
def _usual_umask():
    previous = os.umask(0o022)  # what most shells have: new files readable by all
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_local_secrets_are_owner_only(tmp_path):
    Settings(local_data_dir=tmp_path / "data").with_local_secrets()
    assert mode(tmp_path / "data" / "secrets") == 0o600
    assert mode(tmp_path / "data") == 0o700


def test_secrets_written_readable_by_all_are_made_owner_only(tmp_path):
    (tmp_path / "secrets").write_text("a" * 64 + "\n" + "b" * 64 + "\n")
    os.chmod(tmp_path / "secrets", 0o644)
    settings = Settings(local_data_dir=tmp_path).with_local_secrets()
    assert settings.tasks_secret == "a" * 64 and mode(tmp_path / "secrets") == 0o600


def test_the_queue_database_and_its_journal_are_owner_only(tmp_path):
    store = LocalQueueStore(tmp_path / "q" / "queue.sqlite3")
    store.add([TaskRequest(queue="default", path="/_tasks/deferred", body=b"signed body")])
    files = sorted(tmp_path.joinpath("q").glob("queue.sqlite3*"))
    assert files and all(mode(f) == 0o600 for f in files), [(f.name, oct(mode(f))) for f in files]
    store.close()
