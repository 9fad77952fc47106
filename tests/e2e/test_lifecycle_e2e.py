"""A task's life through gunicorn and a real queue: records, results, cancel, limits, effectively once."""
from __future__ import annotations

import collections
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests

from core import db
from core.devserver.ports import free_port
from core.tasks import TaskCancelled, TaskFailed, TaskHandle
from core.tasks.executor import DEAD_LETTER_KIND
from core.testing import on_every_server
from tests.e2e.conftest import probe_runs, wait_for
from tests.services.tasks_emulator import start_tasks_emulator

QUEUE_YAML = """
queue:
- name: default
  rate: 500/s
  bucket_size: 500
  max_concurrent_requests: 8
  retry_parameters:
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.5
- name: limited
  rate: 500/s
  retry_parameters:
    task_retry_limit: 2
    min_backoff_seconds: 0.05
    max_backoff_seconds: 0.2
"""
PROJECT, LOCATION = "local-project", "europe-west1"


@pytest.fixture
def queue_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "queue.yaml"
    path.write_text(QUEUE_YAML)
    return path


@pytest.fixture
def stack(make_stack, queue_yaml):
    return make_stack(app_module="tests.e2e.app:app", queue_yaml=queue_yaml)


def _post(stack, route: str, **data: str) -> dict:
    response = requests.post(stack.url + route, data=data, timeout=30)
    response.raise_for_status()
    return response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}


def test_result_returns_the_value_and_times_out_while_running(stack):
    token = uuid.uuid4().hex
    handle = TaskHandle.fetch(_post(stack, "/probes/tracked", token=token, seconds="1.5")["id"])
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)
    assert handle.result(timeout=60) == 42
    status = handle.status()
    assert status.state == "succeeded" and status.attempts == 1 and status.ended_at >= status.started_at


@on_every_server
def test_a_failing_task_on_a_queue_with_retry_limit_2_runs_3_times_then_one_dead_letter(stack):
    token = uuid.uuid4().hex
    handle = TaskHandle.fetch(_post(stack, "/probes/failing", token=token)["id"])
    with pytest.raises(TaskFailed) as caught:
        handle.result(timeout=60)
    assert caught.value.error_type == "RuntimeError" and "always" in caught.value.error_message
    letters = wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), message="the dead letter")
    time.sleep(1.0)  # a fourth attempt would come within the queue's 0.2 s backoff
    assert len(probe_runs(token)) == 3 and len(db.Query(DEAD_LETTER_KIND).run()) == 1
    assert letters[0]["attempts"] == 3 and "limit of queue 'limited'" in letters[0]["error"]
    assert handle.status().attempts == 3


def test_cancel_after_scheduling_and_in_flight(stack):
    token = uuid.uuid4().hex
    scheduled = TaskHandle.fetch(_post(stack, "/probes/tracked", token=token, countdown="30")["id"])
    assert _post(stack, "/probes/cancel", task_id=scheduled.id) == {"cancelled": True}
    assert scheduled.status().state == "cancelled"
    with pytest.raises(TaskCancelled):
        scheduled.result(timeout=5)
    assert _post(stack, "/probes/cancel", task_id=scheduled.id) == {"cancelled": False}  # ended already

    running = TaskHandle.fetch(_post(stack, "/probes/tracked", token=token, seconds="2")["id"])
    wait_for(lambda: running.status().state == "running", message="the task to start")
    assert _post(stack, "/probes/cancel", task_id=running.id) == {"cancelled": True}
    with pytest.raises(TaskCancelled):
        running.result(timeout=60)
    assert len(probe_runs(token)) == 1  # only the attempt that was already running


def test_sigkilled_dispatcher_neither_loses_nor_repeats_a_tracked_task(stack, capsys):
    token, count = uuid.uuid4().hex, 60
    _post(stack, "/probes/mixed", token=token, count=str(count), seconds="0.2")
    wait_for(lambda: len(probe_runs(token)) >= 10, message="some tasks to run")
    stack.stop_dispatcher(signal.SIGKILL)
    assert len(probe_runs(token)) < 2 * count, "the kill must happen mid-drain"
    stack.start_dispatcher()

    def finished() -> bool:
        runs = probe_runs(token)
        return {r["index"] for r in runs if r["probe"] == "tracked_slow"} == set(range(count)) and \
            {r["index"] for r in runs if r["probe"] == "untracked_slow"} == set(range(count))

    wait_for(finished, timeout=120, message="every task to run")
    def states() -> collections.Counter[str]:
        return collections.Counter(r["state"] for r in db.Query("_tasks_record").run()
                                   if r["target"] == "tests.e2e.app.tracked_slow")

    try:
        wait_for(lambda: states() == {"succeeded": count}, message="every record to end")
    except BaseException:
        print(states(), [(r.key.name, r["state"], r["attempts"], r["error"]) for r in db.Query("_tasks_record").run()
                         if r["state"] != "succeeded"])
        print(stack.log_tail("dispatcher"), stack.log_tail("gunicorn", 8000))
        raise
    time.sleep(1.0)  # redeliveries of the killed dispatcher's pushes come within the backoff
    runs = collections.Counter((r["probe"], r["index"]) for r in probe_runs(token))
    tracked_duplicates = sum(n - 1 for (probe, _), n in runs.items() if probe == "tracked_slow")
    untracked_duplicates = sum(n - 1 for (probe, _), n in runs.items() if probe == "untracked_slow")
    with capsys.disabled():
        print(f"\nSIGKILLed dispatcher, {count} + {count} tasks: duplicate executions tracked "
              f"{tracked_duplicates}, untracked {untracked_duplicates}")
    assert tracked_duplicates == 0


def test_cloud_tasks_limit_and_cancel_through_the_emulator(make_stack, queue_yaml):
    port = free_port()
    with start_tasks_emulator(target_port=port, queues=["default", "limited"], max_retries=6,
                              project=PROJECT, location=LOCATION) as emulator:
        stack = make_stack(port=port, app_module="tests.e2e.app:app", queue_yaml=queue_yaml,
                           extra_env={"TASKS_BACKEND": "cloudtasks", "TASKS_EMULATOR": emulator.host,
                                      "GOOGLE_CLOUD_PROJECT": PROJECT, "TASKS_REGION": LOCATION})
        token = uuid.uuid4().hex
        failing = TaskHandle.fetch(_post(stack, "/probes/failing", token=token)["id"])
        with pytest.raises(TaskFailed):
            failing.result(timeout=60)
        wait_for(lambda: db.Query(DEAD_LETTER_KIND).run(), message="the dead letter")
        time.sleep(1.0)  # the emulator would retry at once, up to 6 times
        assert len(probe_runs(token)) == 3 and len(db.Query(DEAD_LETTER_KIND).run()) == 1

        # The emulator cannot delete (501): the revocation in the record keeps the task from running.
        scheduled = TaskHandle.fetch(_post(stack, "/probes/tracked", token=token, countdown="2")["id"])
        assert _post(stack, "/probes/cancel", task_id=scheduled.id) == {"cancelled": True}
        def refused() -> bool:  # the handler touches the record of a cancelled task it refuses to run
            record = db.get(db.key("_tasks_record", scheduled.id))
            return record["updated_at"] > record["ended_at"]

        wait_for(refused, timeout=30, message="the push of the cancelled task")
        assert scheduled.status().state == "cancelled"
        assert [r for r in probe_runs(token) if r["probe"] == "tracked_slow"] == []
