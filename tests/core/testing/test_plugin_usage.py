"""The plugin explains itself: a suite without an app is told what to set, every fixture is documented,
and a failing task surfaces as the public ``core.tasks.TaskFailed``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import core.tasks
from core.tasks import callDeferred

CHECKOUT = Path(__file__).resolve().parents[3]
PLUGIN_FIXTURES = ("datastore_emulator", "settings", "datastore", "make_app", "app", "client", "task_queue",
                   "make_stack", "live_stack")


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain pytest in ``folder`` (its own rootdir and ini) with the plugin loaded from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "core.testing", "-p", "no:cacheprovider", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_suite_without_tasks_app_is_told_what_to_set(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_home.py").write_text("def test_home(client):\n    assert client.get('/').status_code == 200\n")
    result = run_pytest(tmp_path, "-q")
    assert result.returncode != 0
    assert "UsageError" in result.stdout
    assert "tasks_app = yourmodule:app" in result.stdout
    assert "NoneType" not in result.stdout


def test_every_fixture_of_the_plugin_has_a_docstring(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = run_pytest(tmp_path, "--fixtures", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    section = result.stdout.split("fixtures defined from core.testing", 1)[1].split("\n---", 1)[0]
    documented = {}
    for match in re.finditer(r"^(\w+)(?: \[\w+ scope\])?(?: -- .*)?\n((?:    .*\n?)*)", section, re.MULTILINE):
        documented[match.group(1)] = match.group(2).strip()
    assert set(PLUGIN_FIXTURES) <= set(documented), documented.keys()
    undocumented = [name for name in PLUGIN_FIXTURES if not documented[name]
                    or "no docstring available" in documented[name]]
    assert undocumented == []


ATTEMPTS: list[str] = []


@callDeferred
def always_fails(label: str) -> None:
    ATTEMPTS.append(label)
    raise RuntimeError(f"broken {label}")


def test_run_pending_raises_the_public_task_failed_with_the_tasks_error(app, task_queue):
    always_fails("x")
    with pytest.raises(core.tasks.TaskFailed) as caught:
        task_queue.run_pending(max_attempts=1)
    failure = caught.value
    assert failure.error_type == "RuntimeError"
    assert "broken x" in (failure.traceback or "")
    assert isinstance(failure.__cause__, RuntimeError)
    assert ATTEMPTS == ["x"]


def test_an_unknown_cron_group_raises_the_public_task_failed(app, task_queue):
    with pytest.raises(core.tasks.TaskFailed, match="cron ping answered 404"):
        task_queue.ping_cron("no-such-group")
