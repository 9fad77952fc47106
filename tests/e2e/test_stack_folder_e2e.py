"""One local stack per data folder: a second is refused, naming the first; a SIGKILLed one's leftovers block nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from core.devserver.folder_lock import FolderInUse
from core.devserver.ports import free_port
from core.devserver.stack import LocalStack
from tests.e2e.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]

#: A real stack in its own process, on the session's emulator, until it is killed.
STACK_PROCESS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from core.devserver.datastore_emulator import DatastoreEmulator
    from core.devserver.stack import LocalStack

    emulator = DatastoreEmulator(process=None, port=int(sys.argv[2]), data_dir=None)
    stack = LocalStack(data_dir=Path(sys.argv[1]), datastore=emulator, persist=False, cron=False, workers=1,
                       app_module="tests.e2e.app:app", root=Path(sys.argv[3]))
    stack.start()
    print("serving", stack.url, flush=True)
    time.sleep(600)
""")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def second_stack(folder: Path, datastore_emulator) -> LocalStack:
    return LocalStack(data_dir=folder, datastore=datastore_emulator, persist=False, cron=False, workers=1,
                      app_module="tests.e2e.app:app", root=REPO)


def test_a_second_stack_on_a_folder_is_refused_and_a_killed_ones_leftovers_block_nothing(tmp_path, datastore_emulator):
    folder = tmp_path / "data"
    first = subprocess.Popen([sys.executable, "-c", STACK_PROCESS, str(folder), str(datastore_emulator.port),
                              str(REPO)], cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    services: list[int] = []
    second = second_stack(folder, datastore_emulator)
    try:
        line = first.stdout.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("serving "), line
        url = line.split()[1]
        services = children(first.pid)  # its gunicorn and dispatcher, each a process group of its own
        state = (folder / "stack.json").read_text()

        # Beside it, a second stack on the same folder starts nothing and says who serves it.
        second.port = free_port()
        with pytest.raises(FolderInUse) as refused:
            second.start()
        assert f"PID {first.pid}, {url}" in str(refused.value) and str(folder) in str(refused.value)
        assert second.gunicorn is None and second.dispatcher is None
        second.stop()  # stopping the refused stack removes nothing of the first's
        assert (folder / "stack.json").read_text() == state
        assert requests.get(url + "/", timeout=10).status_code < 500

        # SIGKILLed, the first leaves its lock file and stack.json behind; they block nothing.
        first.kill()
        first.wait()
        for pid in services:
            os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in services), message="the services to end")
        assert (folder / "stack.lock").exists() and (folder / "stack.json").exists()
        with second_stack(folder, datastore_emulator) as third:
            assert json.loads((folder / "stack.json").read_text())["url"] == third.url
            assert requests.get(third.url + "/", timeout=10).status_code < 500
        assert not (folder / "stack.json").exists()  # its own, removed when it stopped
    finally:
        second.stop()
        if first.poll() is None:
            first.kill()
            first.wait()
        for pid in services:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
