"""Every ``flask tasks`` command answers what stops it in one line and a failing exit, never a traceback,
and never waits long on an endpoint that does not answer (the real ``flask`` command, run as a user runs it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flask(*args: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("TASKS_", "DATASTORE_", "GOOGLE_")) and k not in ("PORT",)}
    environ = {**keep, "LOCAL_DATA_DIR": str(tmp_path / "data"), "TASKS_SECRET": "s", "SECRET_KEY": "k",
               "GOOGLE_CLOUD_PROJECT": "p", "DATASTORE_EMULATOR_HOST": f"127.0.0.1:{closed_port()}", **env}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "main", "tasks", *args], cwd=CHECKOUT,
                            env=environ, capture_output=True, text=True, timeout=180)
    return result, time.monotonic() - started


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.mark.parametrize("args", [("sync-queues",), ("queue", "pause", "default")])
def test_missing_credentials_are_one_actionable_line(tmp_path, args) -> None:
    result, _ = flask(*args, tmp_path=tmp_path, TASKS_BACKEND="cloudtasks", GOOGLE_APPLICATION_CREDENTIALS="",
                      HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST="127.0.0.1:9",
                      GCE_METADATA_IP="127.0.0.1:9")
    assert "no Google credentials found" in one_line(result)


@pytest.mark.parametrize("args", [("sync-queues",), ("sync-scheduler", "--dry-run")])
def test_an_endpoint_that_does_not_answer_is_one_line_after_a_bounded_wait(tmp_path, args) -> None:
    port = closed_port()
    result, took = flask(*args, tmp_path=tmp_path, TASKS_BACKEND="cloudtasks", TASKS_EMULATOR=f"127.0.0.1:{port}",
                         TASKS_SCHEDULER_EMULATOR=f"127.0.0.1:{port}", TASKS_TARGET="http",
                         TASKS_TARGET_URL="https://app.example",
                         TASKS_SERVICE_ACCOUNT="tasks@p.iam.gserviceaccount.com")
    line = one_line(result)
    assert "did not answer" in line and f"127.0.0.1:{port}" in line
    assert took < 60, f"waited {took:.0f} s"            # bounded (10 s of retries), not the client's minutes


def test_a_missing_file_is_one_line(tmp_path) -> None:
    result, _ = flask("sync-queues", "--queue-yaml", str(tmp_path / "nope.yaml"), tmp_path=tmp_path,
                      TASKS_BACKEND="cloudtasks", TASKS_EMULATOR=f"127.0.0.1:{closed_port()}")
    assert one_line(result) == f"Error: file not found: {tmp_path / 'nope.yaml'}"


def test_dry_run_writes_nothing_and_says_what_it_would_do(tmp_path) -> None:
    result, _ = flask("sync-queues", "--dry-run", tmp_path=tmp_path, TASKS_BACKEND="cloudtasks",
                      TASKS_EMULATOR=f"127.0.0.1:{closed_port()}")
    assert result.returncode == 0, result.stderr
    assert "would sync projects/p/locations/europe-west1/queues/default" in result.stdout
