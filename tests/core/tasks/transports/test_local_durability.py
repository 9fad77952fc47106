"""The dispatcher as its own process: SIGKILL mid-run loses no task; SIGTERM stops it cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.tasks.transports.base import EnqueueStatus, TaskRequest
from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport

from .recording_server import Recorder

REPO_ROOT = Path(__file__).resolve().parents[4]
QUEUE_YAML = """
queue:
- name: default
  rate: 500/s
  bucket_size: 100
  max_concurrent_requests: 4
  retry_parameters:
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.5
"""


def _start_dispatcher(db: Path, url: str, queue_yaml: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "core.tasks.transports.local", "--db", str(db), "--url", url,
             "--queue-yaml", str(queue_yaml), "--grace", "1"],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        )


def _wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_mid_run_loses_no_task(tmp_path: Path, recorder: Recorder) -> None:
    db, queue_yaml, log = tmp_path / "queue.db", tmp_path / "queue.yaml", tmp_path / "dispatcher.log"
    queue_yaml.write_text(QUEUE_YAML)
    store = LocalQueueStore(db)
    count = 24
    results = LocalTransport(store).enqueue_many(
        [TaskRequest(queue="default", path="/slow/0.25", body=str(i).encode()) for i in range(count)]
    )
    assert all(r.status is EnqueueStatus.CREATED for r in results)

    first = _start_dispatcher(db, recorder.url, queue_yaml, log)
    try:
        # Wait until pushes are in flight (the slow route holds them), then kill without warning.
        recorder.wait_for(lambda: recorder.current >= 2 and len(recorder.calls) >= 6, timeout=30)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    delivered_before = {c.body for c in recorder.calls}
    assert 0 < len(delivered_before) < count
    assert store.counts()["default"]["leased"] > 0  # the dead dispatcher's leases are still there

    second = _start_dispatcher(db, recorder.url, queue_yaml, log)
    try:
        _wait_until(lambda: store.pending() == 0, 60, "the restarted dispatcher to drain the queue")
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    bodies = [c.body for c in recorder.calls]
    assert set(bodies) == {str(i).encode() for i in range(count)}  # every task at least once
    assert len(bodies) >= count
    assert store.failed() == [] and store.tasks() == []
    assert "reclaimed" in log.read_text()
    store.close()


def test_sigterm_gives_back_leases_and_releases_the_lock(tmp_path: Path, recorder: Recorder) -> None:
    db, queue_yaml, log = tmp_path / "queue.db", tmp_path / "queue.yaml", tmp_path / "dispatcher.log"
    queue_yaml.write_text(QUEUE_YAML)
    store = LocalQueueStore(db)
    LocalTransport(store).enqueue_many([TaskRequest(queue="default", path="/slow/30.0", body=b"x")] * 6)

    proc = _start_dispatcher(db, recorder.url, queue_yaml, log)
    try:
        recorder.wait_for(lambda: recorder.current == 4, timeout=30)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()  # grace of 1 s, then it gives up on the pushes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.counts()["default"] == {"queued": 6, "leased": 0, "failed": 0}
    recorder.release.set()

    again = _start_dispatcher(db, recorder.url, queue_yaml, log)  # the lock was released
    try:
        _wait_until(lambda: store.pending() == 0, 30, "the next dispatcher to drain the queue")
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(15)
    assert "reclaimed" not in log.read_text()
    store.close()
