"""``flask tasks queue ...`` run as an operator runs it, beside a live local stack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from core import db
from tests.e2e.conftest import wait_for

CHECKOUT = Path(__file__).resolve().parents[2]


def flask(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST", "PORT", "TASKS_BACKEND")}
    env["LOCAL_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "main", "tasks", "queue", *args], cwd=CHECKOUT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_pause_list_resume_and_purge_from_the_command_line(live_stack):
    data_dir = live_stack.data_dir
    paused = flask("pause", "default", data_dir=data_dir)
    assert paused.returncode == 0 and paused.stdout.strip() == "paused queue default", paused.stderr
    for month in ("2027-01", "2027-02"):
        requests.get(f"{live_stack.url}/invoices/close_month?month={month}").raise_for_status()
    time.sleep(1.5)
    assert db.get(db.key("invoice_total", "2027-01")) is None          # paused: nothing ran

    status = json.loads(flask("status", "--json", data_dir=data_dir).stdout)
    [default] = [row for row in status if row["name"] == "default"]
    assert default["paused"] is True and default["waiting"] == 2
    listed = json.loads(flask("list", "default", "--json", data_dir=data_dir).stdout)
    assert [task["target"] for task in listed["tasks"]] == ["example.invoices.Invoices.recompute_totals"] * 2

    resumed = flask("resume", "default", data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: db.get(db.key("invoice_total", "2027-02")), message="the tasks to run after resume")

    flask("pause", "default", data_dir=data_dir)
    requests.get(f"{live_stack.url}/invoices/close_month?month=2027-03").raise_for_status()
    purged = flask("purge", "default", "--yes", data_dir=data_dir)
    assert purged.stdout.strip() == "purged queue default: 1 task(s) deleted", purged.stderr
    flask("resume", "default", data_dir=data_dir)
    time.sleep(1.0)
    assert db.get(db.key("invoice_total", "2027-03")) is None


def test_an_unknown_queue_is_one_line_and_a_failing_exit(tmp_path):
    result = flask("pause", "reprots", data_dir=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: UnknownQueue: ") and "unknown queue 'reprots'" in line and "queue.yaml" in line
    assert "Traceback" not in result.stderr
