"""Flask CLI commands of the task module: ``flask --app main tasks <command>``.

``tasks`` is one click group; other commands join it with ``@tasks_cli.command(...)``. The app
factory adds it to every app with :func:`init_app`.
"""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

tasks_cli = AppGroup("tasks", help="Task maintenance: cron.yaml from the code, queues.")


@tasks_cli.command("cron-yaml")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the file here instead of printing it.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of printing, check that this cron.yaml covers every declared cron group "
                   "(exit status 1 if not).")
def cron_yaml_command(output: Path | None, check_path: Path | None) -> None:
    """Print the cron.yaml that pings every cron group the app's periodic tasks declare."""
    from core.tasks.cronyaml import coverage_problems, load_cron_yaml, plan_cron, render_cron_yaml

    runtime = current_app.extensions["core"]
    timezone = runtime.settings.tasks_timezone
    if check_path is not None:
        problems = coverage_problems(load_cron_yaml(check_path), runtime.registry, timezone)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"{check_path} covers every cron group")
        return
    text = render_cron_yaml(plan_cron(runtime.registry, timezone))
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@tasks_cli.command("sync-queues")
@click.option("--queue-yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="queue.yaml to apply (default: the QUEUE_YAML setting, deploy/queue.yaml).")
def sync_queues_command(queue_yaml: Path | None) -> None:
    """Create or update the Cloud Tasks queues of queue.yaml through the API."""
    from core.tasks.queues import load_queue_config
    from core.tasks.transports.cloudtasks import sync_queues

    settings = current_app.extensions["core"].settings
    for path in sync_queues(settings, load_queue_config(queue_yaml or settings.queue_yaml)):
        click.echo(f"synced {path}")


def init_app(app: Flask) -> None:
    """Add the ``tasks`` command group to ``app`` (idempotent)."""
    if "tasks" not in app.cli.commands:
        app.cli.add_command(tasks_cli)
