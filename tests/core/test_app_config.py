"""An app's settings come from ``app.config`` first and the environment second; a production app
loads only the code its configuration uses."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Flask

from core.config import SOURCES, Settings
from core.tasks import Tasks

ROOT = Path(__file__).resolve().parents[2]


def test_app_config_wins_over_the_environment(tmp_path) -> None:
    environ = {"TASKS_REGION": "us-central1", "TASKS_DEFAULT_QUEUE": "env-queue", "PORT": "9000"}
    settings = Settings.from_config({"TASKS_DEFAULT_QUEUE": "config-queue", "TASKS_PAYLOAD_LIMIT": 5000,
                                     "TASKS_TRACKED_QUEUES": ["a", "b"],
                                     "TASKS_PRIORITY_QUEUES": {"high": "urgent"},
                                     "TASKS_QUEUE_YAML": str(tmp_path / "q.yaml")}, environ)
    assert settings.tasks_default_queue == "config-queue"
    assert settings.tasks_region == "us-central1"            # not in app.config: the environment's
    assert settings.tasks_payload_limit == 5000
    assert settings.tasks_tracked_queues == frozenset({"a", "b"})
    assert dict(settings.tasks_priority_queues)["high"] == "urgent"
    assert settings.queue_yaml == tmp_path / "q.yaml"
    assert settings.port == 9000 and settings.local_app_url == "http://127.0.0.1:9000"


def test_from_prefixed_env_and_from_mapping_configure_the_extension(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FLASK_TASKS_BACKEND", "inline")
    monkeypatch.setenv("FLASK_TASKS_PAYLOAD_LIMIT", "4321")       # parsed as JSON by Flask: an int
    monkeypatch.setenv("TASKS_DEFAULT_QUEUE", "from-env")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    app.config.from_mapping(TASKS_SECRET="s3cret", SECRET_KEY="k3y", TASKS_LOCAL_DATA_DIR=str(tmp_path),
                            TASKS_DATASTORE_EMULATOR_HOST="127.0.0.1:1")
    runtime = Tasks(app).runtime(app)
    settings = runtime.settings
    assert (settings.tasks_backend, settings.tasks_payload_limit) == ("inline", 4321)
    assert (settings.tasks_secret, settings.secret_key) == ("s3cret", "k3y")
    assert settings.tasks_default_queue == "from-env"
    assert type(runtime.transport).__name__ == "InlineTransport"


def test_a_bad_value_names_its_key() -> None:
    with pytest.raises(ValueError, match=r"app.config\['TASKS_PAYLOAD_LIMIT'\]"):
        Settings.from_config({"TASKS_PAYLOAD_LIMIT": "lots"}, {})
    with pytest.raises(ValueError, match=r"\$PORT"):
        Settings.from_config({}, {"PORT": "eighty"})


def test_every_setting_is_in_the_readme_table_with_its_config_key() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| ---")) + 1
    table = lines[first:lines.index("", first)]
    assert all(line.startswith("| ") for line in table), "the table is one block of rows"
    keys = {row.split("|")[1].strip().strip("`") for row in table}
    settings = {source.key for source in SOURCES} | {"TASKS_RUNTIME"}
    assert settings <= keys and keys <= settings | {"(environment only)"}


IMPORTS = textwrap.dedent("""
    import json, sys
    from flask import Flask
    from core.tasks import Tasks
    app = Flask(__name__)
    app.config.from_mapping(TASKS_SECRET="s", SECRET_KEY="k", TASKS_PROJECT="p")
    runtime = Tasks(app).runtime(app)
    runtime.transport
    print(json.dumps(sorted(sys.modules)))
""")


def _modules_loaded(env: dict[str, str]) -> set[str]:
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_a_production_app_loads_neither_the_dev_server_nor_other_transports() -> None:
    modules = _modules_loaded({"GAE_ENV": "standard", "GAE_APPLICATION": "p"})
    assert "core.tasks.transports.cloudtasks" in modules
    # A lazy package's __init__ (its names, no code of its rooms) may be loaded; its rooms may not.
    loaded = sorted(m for m in modules if m.startswith(("core.devserver.", "core.tasks.transports.local",
                                                        "core.tasks.transports.inline", "core.testing")))
    assert loaded == []


def test_a_local_app_does_not_load_the_cloud_tasks_client(tmp_path) -> None:
    modules = _modules_loaded({"TASKS_BACKEND": "local", "LOCAL_DATA_DIR": str(tmp_path),
                               "DATASTORE_EMULATOR_HOST": "127.0.0.1:1"})
    assert "core.tasks.transports.local.transport" in modules
    assert not {m for m in modules if m.startswith(("core.tasks.transports.cloudtasks", "google.cloud.tasks"))}
