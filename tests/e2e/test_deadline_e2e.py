"""A task with ``timeout=`` shorter than its work, through gunicorn and the durable local queue."""
from __future__ import annotations

import time
import uuid

import requests

from core import db
from core.tasks.deadline import CLAIM_KIND
from tests.e2e.conftest import probe_runs, wait_for


def test_an_untracked_task_longer_than_its_timeout_runs_once(probe_stack):
    token = uuid.uuid4().hex
    requests.post(probe_stack.url + "/probes/overrunning", data={"token": token, "seconds": "3"}).raise_for_status()
    (run,) = wait_for(lambda: probe_runs(token), timeout=60, message="the task to run")
    time.sleep(6)  # the queue pushed it again when its 1 s deadline passed, and again after that
    assert len(probe_runs(token)) == 1, "pushed again while it ran, it did not run again"
    assert run["deadline"] is not None, "the task could read its deadline"
    (claim,) = [c for c in db.Query(CLAIM_KIND).run() if c.get("done")]
    assert claim["overran_by"] > 1, "the run that overran is recorded as such"
