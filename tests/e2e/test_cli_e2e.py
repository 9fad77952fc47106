"""The README's ``flask --app main ...`` commands, run as a developer runs them: beside a running
``python main.py`` stack (its emulator is found through ``stack.json``) and without one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core import db
from core.devserver.datastore_emulator import start_datastore_emulator

CHECKOUT = Path(__file__).resolve().parents[2]


def flask(*args: str, data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST", "PORT", "TASKS_BACKEND")}
    env["LOCAL_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "main", *args], cwd=CHECKOUT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=300)


def test_users_create_reaches_the_running_stacks_emulator(make_stack):
    stack = make_stack()
    result = flask("users", "create", "carol", "--admin", data_dir=stack.data_dir, stdin="pw-carol\npw-carol\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "user 'carol' saved (admin)" in result.stdout
    user = db.get(db.key("user", "carol"))  # the stack's emulator (make_stack made it the default store)
    assert user is not None and user["admin"] is True


def test_users_create_without_a_stack_starts_the_emulator_on_the_projects_data(tmp_path):
    data_dir = tmp_path / "local-data"
    result = flask("users", "create", "dora", data_dir=data_dir, stdin="pw-dora\npw-dora\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started the Datastore emulator" in result.stderr
    # The user is in the data `python main.py` will serve: start that emulator again and look.
    emulator = start_datastore_emulator(data_dir=data_dir / "datastore", persist=True)
    try:
        store = db.Datastore("local-project", None, emulator.host)
        user = store.client.get(store.key("user", "dora"))
        store.close()
    finally:
        emulator.stop()
    assert user is not None and user["admin"] is False


def test_tasks_cron_yaml_needs_no_emulator(tmp_path):
    result = flask("tasks", "cron-yaml", data_dir=tmp_path / "local-data")
    assert result.returncode == 0, result.stderr
    assert "/_tasks/cron/default" in result.stdout and "started the Datastore emulator" not in result.stderr
