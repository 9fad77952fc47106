"""A call cancelled in the request that deferred it, through gunicorn and the durable local queue."""
from __future__ import annotations

import time
import uuid

import requests

from tests.e2e.conftest import probe_runs, wait_for


def test_a_call_cancelled_in_its_own_request_never_runs(probe_stack):
    token = uuid.uuid4().hex
    response = requests.post(probe_stack.url + "/probes/defer_then_cancel", data={"token": token})
    assert response.status_code == 200 and response.json() == {"cancelled": True}
    wait_for(lambda: probe_runs(f"{token}-kept"), message="the call deferred beside it to run")
    time.sleep(1.0)  # the cancelled call was in the same batch: it would have run by now
    assert probe_runs(token) == []
