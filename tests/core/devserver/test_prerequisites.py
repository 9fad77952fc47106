"""Without Java the local stack says what to install, on the console, instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[3]


def test_run_local_without_java_names_what_to_install(tmp_path):
    (tmp_path / "myapp.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    env = {key: value for key, value in os.environ.items() if key not in ("DATASTORE_EMULATOR_JAR", "PORT")}
    env.update(PATH=str(tmp_path / "no-bin"), PYTHONPATH=str(CHECKOUT))  # no java, no gcloud on PATH
    result = subprocess.run([sys.executable, "-m", "core.devserver", "myapp:app"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("run-local: the local stack cannot start: java not found")
    assert "Java 17" in message and "apt-get install openjdk-17-jre-headless" in message
    assert "deploy/setup.sh --app-only" in message
    # The project lacks queue.yaml and cron.yaml: the console says what that means before anything starts.
    assert "periodic tasks never run locally" in result.stderr
    assert "only the `default` queue exists" in result.stderr
