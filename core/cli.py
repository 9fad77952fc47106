"""Flask CLI commands of the task module: ``flask --app main tasks <command>``.

``tasks`` is one click group; other commands join it with ``@tasks_cli.command(...)``. The
extension adds it to every app with :func:`init_app`. Commands run in an app context, so the app's
runtime and Datastore are current; a local app without ``DATASTORE_EMULATOR_HOST`` uses the
running stack's emulator (or starts one for the command, see ``core.devserver.locate``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from core.config import project_root
from core.devserver.stack import run_local
from core.scaffold import plan_scaffold, write_scaffold
from core.tasks.cloudscheduler import sync_scheduler
from core.tasks.cronyaml import coverage_problems, load_cron_yaml, plan_cron, render_cron_yaml
from core.tasks.errors import ConfigurationError
from core.tasks.queues import load_queue_config
from core.tasks.transports.cloudtasks import sync_queues

tasks_cli = AppGroup("tasks", help="Task maintenance: cron.yaml and Cloud Scheduler jobs from the code, queues.")


@tasks_cli.command("cron-yaml")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the file here instead of printing it.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of printing, check that this cron.yaml covers every declared cron group "
                   "(exit status 1 if not).")
def cron_yaml_command(output: Path | None, check_path: Path | None) -> None:
    """Print the cron.yaml that pings every cron group the app's periodic tasks declare."""
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


@tasks_cli.command("init")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
def init_command(dry_run: bool) -> None:
    """Write a starter queue.yaml, the cron.yaml of the app's periodic tasks and the .gitignore lines."""
    runtime = current_app.extensions["core"]
    root = project_root()
    cron_text = render_cron_yaml(plan_cron(runtime.registry, runtime.settings.tasks_timezone))
    planned, refused = plan_scaffold(root, cron_text)
    if refused:
        names = ", ".join(path.name for path in refused)
        raise click.ClickException(f"refusing to overwrite {names} in {root}: nothing was written. Move "
                                   f"{'it' if len(refused) == 1 else 'them'} aside to start again (cron.yaml "
                                   "alone: `tasks cron-yaml -o cron.yaml` rewrites it from the code).")
    for item in planned:
        if dry_run:
            click.echo(f"--- would {item.describe()} ({item.path})")
            click.echo(item.text, nl=False)
        else:
            click.echo(f"{item.describe()}: {item.path}")
    if dry_run:
        click.echo("dry run: nothing was written")
    elif not planned:
        click.echo("nothing to do")
    else:
        write_scaffold(planned)


@tasks_cli.command("sync-queues")
@click.option("--queue-yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="queue.yaml to apply (default: the QUEUE_YAML setting, deploy/queue.yaml).")
def sync_queues_command(queue_yaml: Path | None) -> None:
    """Create or update the Cloud Tasks queues of queue.yaml through the API."""
    settings = current_app.extensions["core"].settings
    for path in sync_queues(settings, load_queue_config(queue_yaml or settings.queue_yaml)):
        click.echo(f"synced {path}")


@tasks_cli.command("run-local", with_appcontext=False)
@click.option("--port", type=int, default=None, help="Port of the app (default $PORT or 8080).")
@click.pass_context
def run_local_command(ctx: click.Context, port: int | None) -> None:
    """Serve this app on the local stack: Datastore emulator, local queue, gunicorn, cron pings."""
    info = ctx.find_object(ScriptInfo)
    app = info.load_app() if info is not None else current_app._get_current_object()
    run_local(gunicorn_target(app, info.app_import_path if info is not None else None), port=port)


def gunicorn_target(app: Flask, import_path: str | None) -> str:
    """``module:attribute`` naming ``app`` for gunicorn, from what ``flask --app`` was given."""
    if import_path and ":" in import_path:
        return import_path
    module_name = (import_path or app.import_name).removesuffix(".py").replace("/", ".")
    module = sys.modules.get(module_name)
    for name, value in vars(module or object()).items():
        if value is app:
            return f"{module_name}:{name}"
    for factory in ("create_app", "make_app"):
        if callable(getattr(module, factory, None)):
            return f"{module_name}:{factory}()"
    raise click.UsageError(f"cannot tell gunicorn where the app is: pass --app {module_name}:<name>")


@tasks_cli.command("sync-scheduler")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
def sync_scheduler_command(dry_run: bool) -> None:
    """Create, update and delete the Cloud Scheduler jobs that ping the app's cron groups."""
    runtime = current_app.extensions["core"]
    try:
        changes = sync_scheduler(runtime.settings, runtime.registry, dry_run=dry_run)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    for change in changes:
        click.echo(change.describe())
    if not changes:
        click.echo("Cloud Scheduler jobs are up to date")
    elif dry_run:
        click.echo("dry run: nothing was changed")


def init_app(app: Flask) -> None:
    """Add the ``tasks`` command group to ``app`` (idempotent)."""
    if "tasks" not in app.cli.commands:
        app.cli.add_command(tasks_cli)
