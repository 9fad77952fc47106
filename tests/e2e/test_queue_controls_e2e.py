"""Queue controls on the live stack (gunicorn, the local queue's dispatcher, the Datastore emulator):
a paused queue holding 1,000 tasks stops its pushes within a second, a resume drains them all, a
purge empties it."""
from __future__ import annotations

import time
import uuid

import requests

from core.tasks.transports.local.store import LocalQueueStore
from core.tasks.transports.local.transport import LocalTransport
from tests.e2e.conftest import probe_runs, wait_for


def test_pause_stops_pushes_within_a_second_resume_drains_and_purge_empties(probe_stack):
    store = LocalQueueStore(probe_stack.queue_db)
    controls = LocalTransport(store)
    try:
        token = uuid.uuid4().hex
        requests.post(f"{probe_stack.url}/probes/slow", data={"token": token, "count": "1000", "seconds": "0.02"},
                      timeout=120).raise_for_status()
        wait_for(lambda: store.pending("default") <= 900, timeout=60, message="the first pushes")
        controls.pause_queue("default")
        time.sleep(1.0)
        after_a_second = store.pending("default")
        time.sleep(2.0)
        assert store.pending("default") == after_a_second > 0, "pushes went on after the pause"
        assert len(probe_runs(token)) >= 1000 - after_a_second      # nothing lost (untracked: at least once)

        controls.resume_queue("default")
        wait_for(lambda: store.pending("default") == 0, timeout=120, message="the queue to drain")
        wait_for(lambda: len(probe_runs(token)) >= 1000, timeout=30, message="every task to have run")

        purged = uuid.uuid4().hex
        controls.pause_queue("default")
        requests.post(f"{probe_stack.url}/probes/slow", data={"token": purged, "count": "300", "seconds": "0"},
                      timeout=120).raise_for_status()
        wait_for(lambda: store.pending("default") == 300, timeout=30, message="300 tasks held")
        assert controls.purge_queue("default") == 300 and store.pending("default") == 0
        controls.resume_queue("default")
        time.sleep(1.5)
        assert probe_runs(purged) == []
    finally:
        controls.resume_queue("default")
        controls.close()
