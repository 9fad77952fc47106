"""``flask tasks init``: a starter queue.yaml, the code's cron.yaml and .gitignore lines, never overwriting."""
from __future__ import annotations

import yaml

from core.tasks import PeriodicTask
from core.tasks.periodic.cronyaml import load_cron_yaml
from core.tasks.queues import load_queue_config


@PeriodicTask(cronName="scaffold-hourly", interval=60)
def scaffold_hourly() -> None:
    """A periodic task whose group the generated cron.yaml must ping."""


def invoke(app, *args):
    return app.test_cli_runner().invoke(args=["tasks", "init", *args])


def test_init_writes_queue_yaml_cron_yaml_and_gitignore(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".gitignore").write_text("*.pyc")  # a user's own lines stay, the missing one is appended
    result = invoke(make_app())
    assert result.exit_code == 0, result.output
    assert set(load_queue_config(tmp_path / "queue.yaml")) >= {"default", "high", "low"}
    assert "/_tasks/cron/scaffold-hourly" in {entry.url for entry in load_cron_yaml(tmp_path / "cron.yaml")}
    assert yaml.safe_load((tmp_path / "cron.yaml").read_text())["cron"]
    assert (tmp_path / ".gitignore").read_text().splitlines()[0] == "*.pyc"
    assert ".local-data/" in (tmp_path / ".gitignore").read_text().splitlines()
    assert "write queue.yaml" in result.output and "append to .gitignore" in result.output


def test_init_refuses_to_overwrite_and_names_the_files(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cron.yaml").write_text("cron: []\n")
    result = invoke(make_app())
    assert result.exit_code != 0
    assert "refusing to overwrite cron.yaml" in result.output
    assert (tmp_path / "cron.yaml").read_text() == "cron: []\n"
    assert not (tmp_path / "queue.yaml").exists() and not (tmp_path / ".gitignore").exists()


def test_init_dry_run_shows_everything_and_writes_nothing(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(make_app(), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would write queue.yaml" in result.output and "would write cron.yaml" in result.output
    assert "/_tasks/cron/scaffold-hourly" in result.output and ".local-data/" in result.output
    assert not {path.name for path in tmp_path.iterdir()} & {"queue.yaml", "cron.yaml", ".gitignore"}


def test_a_gitignore_that_has_the_lines_is_left_alone(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".gitignore").write_text(".local-data\n")
    result = invoke(make_app())
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".gitignore").read_text() == ".local-data\n"
