"""The ``flask tasks`` commands against real services."""
from __future__ import annotations

from core.config import Settings
from core.devserver.ports import free_port
from tests.services.tasks_emulator import start_tasks_emulator


def test_sync_queues_creates_the_queues_of_queue_yaml(make_app, settings, tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: mails\n  rate: 7/s\n  retry_parameters:\n    task_retry_limit: 4\n")
    with start_tasks_emulator(target_port=free_port(), queues=["default"], project="cli-project",
                              location="europe-west1") as emulator:
        app = make_app({}, settings=settings.replace(project="cli-project", tasks_region="europe-west1",
                                                     tasks_emulator_host=emulator.host))
        result = app.test_cli_runner().invoke(args=["tasks", "sync-queues", "--queue-yaml", str(queue_yaml)])
        assert result.exit_code == 0, result.output
        assert "projects/cli-project/locations/europe-west1/queues/mails" in result.output
        from core.tasks.transports.cloudtasks import make_client

        client = make_client(Settings(project="cli-project", tasks_emulator_host=emulator.host))
        names = {q.name.rsplit("/", 1)[-1]: q for q in client.list_queues(
            parent="projects/cli-project/locations/europe-west1")}
        assert "mails" in names and names["mails"].rate_limits.max_dispatches_per_second == 7


def test_cron_yaml_command_prints_every_group(make_app):
    import main  # noqa: F401 - registers the example app's periodic tasks

    app = make_app({})
    result = app.test_cli_runner().invoke(args=["tasks", "cron-yaml"])
    assert result.exit_code == 0, result.output
    assert "/_tasks/cron/default" in result.output and "/_tasks/cron/nightly" in result.output
