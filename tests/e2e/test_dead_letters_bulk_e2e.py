"""500 dead letters of one target retried in bulk from the command line while the dispatcher is
SIGKILLed in the middle: every one runs exactly once, and none is left or lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import requests

from core import db
from core.tasks.deadletters import DEAD_LETTER_KIND
from tests.e2e.conftest import probe_runs, wait_for

CHECKOUT = Path(__file__).resolve().parents[2]
COUNT = 500


def letters_of(target: str) -> int:
    return sum(1 for letter in db.Query(DEAD_LETTER_KIND).iter() if letter.get("target") == target)


def test_a_bulk_retry_survives_a_dispatcher_kill_and_runs_each_letter_once(probe_stack):
    token = uuid.uuid4().hex
    target = "tests.e2e.app.redeemable"
    db.put(db.Entity(db.key("probe_flag", f"{token}-blocked")))
    requests.post(probe_stack.url + "/probes/redeemable", data={"token": token, "count": str(COUNT)},
                  timeout=120).raise_for_status()
    wait_for(lambda: letters_of(target) >= COUNT, timeout=120, message=f"{COUNT} dead letters")
    requests.post(probe_stack.url + "/probes/permanent", data={"token": uuid.uuid4().hex}).raise_for_status()
    wait_for(lambda: letters_of("tests.e2e.app.permanent") >= 1, message="a letter of another target")
    db.delete(db.key("probe_flag", f"{token}-blocked"))       # the partner is back

    env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST", "PORT", "TASKS_BACKEND")}
    env["LOCAL_DATA_DIR"] = str(probe_stack.data_dir)
    command = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tests.e2e.app:app", "tasks", "dead-letters", "retry",
         "--target", target, "--yes"],
        cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(probe_runs(token)) >= 60 or command.poll() is not None, timeout=120,
                 message="the retried tasks to start")
        assert command.poll() is None, command.communicate()
        probe_stack.stop_dispatcher(signal.SIGKILL)
        assert len(probe_runs(token)) < COUNT, "the kill must happen in the middle"
        probe_stack.start_dispatcher()
        out, err = command.communicate(timeout=300)
    finally:
        command.kill()
    assert command.returncode == 0, out + err
    assert f"retried {COUNT} dead letter(s)" in out
    wait_for(lambda: len(probe_runs(token)) >= COUNT, timeout=180, message=f"all {COUNT} retried tasks")
    runs = Counter(run["index"] for run in probe_runs(token))
    assert sorted(runs) == list(range(COUNT)) and set(runs.values()) == {1}, "each ran exactly once"
    assert letters_of(target) == 0 and letters_of("tests.e2e.app.permanent") == 1   # the other target is kept
