"""A user's own project: a plain Flask app with ``Tasks(app)``, outside this checkout.

The checkout is ``pip install``ed into a fresh virtualenv; the project's own ``tests`` package runs
under plain pytest with the ``core.testing`` plugin found through its entry point; then the
project is served by the documented local-run command and a deferred call over HTTP runs on the
local queue.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from core import db
from core.devserver.ports import free_port
from core.devserver.processes import stop_process_group
from tests.e2e.conftest import wait_for

CHECKOUT = Path(__file__).resolve().parents[2]

APP = '''\
"""A plain Flask app (no module tree) that defers one call and declares one periodic task."""
import datetime

from flask import Flask, request

from core import db
from core.tasks import PeriodicTask, Tasks, callDeferred

app = Flask(__name__)
tasks = Tasks(app)


@callDeferred
def stamp(key: db.Key, when: datetime.datetime) -> None:
    entity = db.Entity(key)
    entity["stamped"] = when.isoformat()
    db.put(entity)


@PeriodicTask(cronName="default")
def nightly() -> None:
    db.put(db.Entity(db.key("Run", "nightly")))


@app.post("/stamp/<name>")
def stamp_view(name: str) -> dict:
    when = datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.timezone.utc)
    stamp(db.key("Doc", name), when, _countdown=int(request.args.get("countdown", "0")))
    return {"queued": name}
'''

TESTS = '''\
import core
from core import db


def doc(name):
    entity = db.get(db.key("Doc", name))
    return entity["stamped"] if entity is not None else None


def test_the_plugin_drains_the_deferred_call(client, task_queue):
    assert client.post("/stamp/a").status_code == 200
    assert doc("a") is None
    task_queue.run_pending()
    assert doc("a") == "2026-12-01T12:30:00+00:00"


def test_a_countdown_task_waits_for_the_clock(client, task_queue):
    client.post("/stamp/b?countdown=60")
    task_queue.run_pending()
    assert doc("b") is None
    task_queue.advance(30)
    assert doc("b") is None
    task_queue.advance(31)
    assert doc("b") == "2026-12-01T12:30:00+00:00"


def test_a_signed_cron_ping_runs_the_periodic_task(task_queue):
    assert db.get(db.key("Run", "nightly")) is None
    task_queue.ping_cron("default")
    assert db.get(db.key("Run", "nightly")) is not None


def test_core_is_the_installed_package():
    assert "site-packages" in core.__file__
'''

IGNORED = shutil.ignore_patterns(".git", ".venv*", ".local-data", "__pycache__", ".pytest_cache", ".hypothesis",
                                 ".ruff_cache", ".mypy_cache", "build", "*.egg-info", "test-artifacts")


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> tuple[Path, Path]:
    """``(venv python, project folder)``: the checkout installed with pip into a fresh virtualenv."""
    root = tmp_path_factory.mktemp("user-project")
    source = root / "checkout"
    shutil.copytree(CHECKOUT, source, ignore=IGNORED, symlinks=True)
    venv = root / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from the suite's own environment (already downloaded); the package not.
    Path(purelib, "suite-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source)],
                             capture_output=True, text=True, cwd=root, env=_clean_env())
    assert install.returncode == 0, install.stdout + install.stderr
    project = root / "myproject"
    (project / "tests").mkdir(parents=True)
    (project / "myapp.py").write_text(APP)
    (project / "tests" / "__init__.py").write_text("")
    (project / "tests" / "test_myapp.py").write_text(TESTS)
    (project / "pytest.ini").write_text("[pytest]\ntasks_app = myapp:app\n")
    return python, project


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing back into this checkout or its emulators."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATASTORE_EMULATOR_HOST", "PORT",
                                                           "LOCAL_DATA_DIR", "QUEUE_YAML", "CRON_YAML",
                                                           "TASKS_BACKEND", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def test_the_users_own_suite_runs_on_the_plugin(user_project):
    python, project = user_project
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                            capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "4 passed" in result.stdout


def test_the_users_app_runs_on_the_local_stack(user_project):
    python, project = user_project
    # The scaffold first: queue.yaml, the cron.yaml of the app's periodic task, .gitignore.
    init = subprocess.run([python, "-m", "flask", "--app", "myapp", "tasks", "init"], cwd=project,
                          env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "/_tasks/cron/default" in (project / "cron.yaml").read_text()
    assert ".local-data/" in (project / ".gitignore").read_text().splitlines()
    again = subprocess.run([python, "-m", "flask", "--app", "myapp", "tasks", "init"], cwd=project,
                           env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "refusing to overwrite queue.yaml, cron.yaml" in again.stderr
    port = free_port()
    log = (project / "run-local.log").open("wb")
    server = subprocess.Popen([python, "-m", "flask", "--app", "myapp", "tasks", "run-local", "--port", str(port)],
                              cwd=project, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        state_file = project / ".local-data" / "stack.json"

        def answering() -> bool:
            if server.poll() is not None:
                pytest.fail(f"run-local exited: {(project / 'run-local.log').read_text()[-3000:]}")
            return state_file.exists()

        wait_for(answering, timeout=120, message="the local stack to start")
        assert requests.post(url + "/stamp/over-http", timeout=30).json() == {"queued": "over-http"}
        state = json.loads(state_file.read_text())
        store = db.Datastore("local-project", None, state["datastore_emulator_host"])
        key = store.key("Doc", "over-http")
        entity = wait_for(lambda: store.client.get(key), timeout=60, message="the deferred call to run")
        assert entity["stamped"] == "2026-12-01T12:30:00+00:00"
        assert (project / ".local-data" / "queue.sqlite3").exists()  # the project's data, not the package's
        # The local cron pings the group of init's cron.yaml: the periodic task runs.
        wait_for(lambda: store.client.get(store.key("Run", "nightly")) is not None, timeout=60,
                 message="the periodic task to run")
        store.close()
    finally:
        stop_process_group(server)
        log.close()
    assert server.returncode is not None and not state_file.exists()  # the command stopped its stack
    assert "run-local: no" not in (project / "run-local.log").read_text()  # nothing missing after init
