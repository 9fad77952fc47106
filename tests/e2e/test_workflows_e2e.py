"""Groups on gunicorn and the local queue, with the dispatcher SIGKILLed while the members run."""
from __future__ import annotations

import collections
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests

from core import db
from core.tasks.workflows import GroupHandle
from tests.e2e.conftest import probe_runs, wait_for

QUEUE_YAML = """
queue:
- name: default
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 8
  retry_parameters:
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.5
"""
MEMBERS, FAIL_EVERY = 1000, 20  # 5 % of the members fail once


@pytest.fixture
def stack(make_stack, tmp_path: Path):
    path = tmp_path / "queue.yaml"
    path.write_text(QUEUE_YAML)
    return make_stack(app_module="tests.e2e.app:app", queue_yaml=path)


def _member_runs(token: str) -> int:
    return len(db.Query("probe_run").filter("token =", token).filter("probe =", "group_member").keys_only().run())


def test_a_group_of_1000_with_flaky_members_and_a_killed_dispatcher_calls_back_once_with_all_results(
        stack, capsys):
    token = uuid.uuid4().hex
    started = time.monotonic()
    response = requests.post(f"{stack.url}/probes/group", data={"token": token, "count": str(MEMBERS),
                                                                "fail_every": str(FAIL_EVERY)}, timeout=60)
    response.raise_for_status()
    handle = GroupHandle(response.json()["id"])
    wait_for(lambda: _member_runs(token) >= MEMBERS // 5, timeout=120, message="a fifth of the members to run")
    stack.stop_dispatcher(signal.SIGKILL)
    killed_at = _member_runs(token)
    assert killed_at < MEMBERS, "the kill must happen while members still run"
    stack.start_dispatcher()
    try:
        assert handle.result(timeout=600) == MEMBERS
    except BaseException:
        print(handle.status(), stack.log_tail("dispatcher"), stack.log_tail("gunicorn", 6000))
        raise
    elapsed = time.monotonic() - started
    status = handle.status()
    assert (status.state, status.done, status.failed, status.total) == ("succeeded", MEMBERS, 0, MEMBERS)
    time.sleep(1.0)  # a second callback would be sent and run within the queue's backoff
    reports = [r for r in probe_runs(token) if r["probe"] == "group_report"]
    assert len(reports) == 1
    assert reports[0]["count"] == MEMBERS and reports[0]["total"] == sum(2 * i for i in range(MEMBERS))
    runs = collections.Counter(r["index"] for r in probe_runs(token) if r["probe"] == "group_member")
    assert set(runs) == set(range(MEMBERS))
    duplicates = sum(n - 1 for n in runs.values())
    assert duplicates == 0  # members are tracked: a redelivered push of one that ended does not run it
    flags = db.Query("probe_flag").keys_only().run()
    assert len([f for f in flags if f.key.name.startswith(token)]) == MEMBERS // FAIL_EVERY
    with capsys.disabled():
        print(f"\ngroup of {MEMBERS} ({MEMBERS // FAIL_EVERY} failing once), dispatcher SIGKILLed after "
              f"{killed_at} member runs: callback after {elapsed:.1f} s; duplicate member runs {duplicates}")
