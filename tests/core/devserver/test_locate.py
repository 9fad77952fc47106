"""How a local app outside the stack finds its Datastore emulator."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import click
import pytest

from core.devserver.locate import LocalDatastore, find_or_start_emulator, running_emulator
from core.tasks.errors import ConfigurationError


def write_state(data_dir, pid: int, host: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "stack.json").write_text(json.dumps({"pid": pid, "url": "http://x", "datastore_emulator_host": host}))


def test_the_running_stacks_emulator_is_used(datastore_emulator, tmp_path):
    write_state(tmp_path, os.getpid(), datastore_emulator.host)
    assert running_emulator(tmp_path) == datastore_emulator.host
    store = LocalDatastore("local-project", data_dir=tmp_path)
    assert store.emulator_host is None  # nothing looked up before the first use
    store.client  # noqa: B018
    assert store.emulator_host == datastore_emulator.host
    store.close()


def test_a_stale_state_file_is_ignored(datastore_emulator, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(tmp_path, int(finished.stdout), datastore_emulator.host)  # that process is gone
    assert running_emulator(tmp_path) is None


def test_outside_a_cli_command_the_error_says_what_to_start(tmp_path):
    with pytest.raises(ConfigurationError, match=r"python main.py.*tasks run-local"):
        find_or_start_emulator(tmp_path)


def test_a_cli_command_starts_the_emulator_for_its_duration(tmp_path):
    with click.Context(click.Command("probe")):
        host = find_or_start_emulator(tmp_path)
        assert running_emulator(tmp_path) is None and host.startswith("127.0.0.1:")
        assert (tmp_path / "datastore" / "WEB-INF").is_dir()  # the stack's persistent data folder
    with pytest.raises(OSError):  # stopped when the command ended
        urllib.request.urlopen(f"http://{host}/", timeout=2)
