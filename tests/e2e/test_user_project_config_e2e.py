"""A user's project outside the checkout, configured only through ``app.config``: its own tests
pass with the plugin's documented fixtures, and the plugin keeps what its ``app.config`` says."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent('''
    import datetime
    from pathlib import Path

    from flask import Flask

    from core.tasks import Tasks, callDeferred

    SENT: list = []

    app = Flask(__name__)
    app.config.from_mapping(
        TASKS_QUEUE_YAML=str(Path(__file__).with_name("queues.yaml")),   # not queue.yaml: only app.config names it
        TASKS_DEFAULT_QUEUE="mail",
        TASKS_TIMEZONE="Europe/Berlin",
        TASKS_RESULT_TTL=60,
    )
    tasks = Tasks(app)


    @callDeferred(track=True)
    def send_mail(to: str) -> str:
        SENT.append(to)
        return to


    @app.post("/mail/<to>")
    def mail(to):
        return {"task": send_mail(to).id}
''')

QUEUES = textwrap.dedent('''
    queue:
    - name: mail
      rate: 10/s
      retry_parameters:
        task_retry_limit: 2
''')

TESTS = textwrap.dedent('''
    from core.tasks import TaskHandle
    from core.tasks.runtime import get_runtime

    import myapp


    def test_the_app_config_is_the_test_apps(app, client, task_queue):
        settings = get_runtime().settings
        assert settings.tasks_default_queue == "mail" and settings.tasks_timezone == "Europe/Berlin"
        assert settings.tasks_result_ttl == 60 and settings.queue_yaml.name == "queues.yaml"
        assert set(get_runtime().queues) == {"mail", "default"}   # App Engine always has "default"
        task = client.post("/mail/ada").get_json()["task"]
        task_queue.run_pending()
        assert myapp.SENT == ["ada"] and TaskHandle.fetch(task).result() == "ada"
        task_queue.advance(120)                      # past TASKS_RESULT_TTL of app.config
        assert get_runtime().queues["mail"].retry.task_retry_limit == 2
''')


def test_a_project_configured_only_through_app_config_passes_its_tests(tmp_path):
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "queues.yaml").write_text(QUEUES)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntasks_app = myapp:app\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mail.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKS_", "QUEUE_YAML", "PYTEST_ADDOPTS"))}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{CHECKOUT}"
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "core.testing", "-p", "no:cacheprovider", "-q"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
