"""Flask CLI commands of the task module: ``flask --app main tasks <command>``.

``tasks`` is one click group; other commands join it with ``@tasks_cli.command(...)``. The
extension adds it to every app with :func:`init_app`. Commands run in an app context, so the app's
runtime and Datastore are current; a local app without ``DATASTORE_EMULATOR_HOST`` uses the
running stack's emulator (or starts one for the command, see ``core.devserver.locate``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from core import devserver
from core.cli_dead_letters import dead_letters_cli
from core.cli_errors import one_line_errors
from core.cli_periodic import periodic_cli
from core.cli_queue import queue_cli
from core.config import SERVERS, project_root
from core.scaffold import plan_scaffold, write_scaffold
from core.tasks import transports
from core.tasks.periodic.cloudscheduler import sync_scheduler
from core.tasks.periodic.cronyaml import coverage_problems, load_cron_yaml, plan_cron, render_cron_yaml
from core.tasks.queues import QueueTable

tasks_cli = AppGroup("tasks", help="Task maintenance: cron.yaml and Cloud Scheduler jobs from the code, queues.")
tasks_cli.add_command(queue_cli)
tasks_cli.add_command(dead_letters_cli)
tasks_cli.add_command(periodic_cli)


@tasks_cli.command("cron-yaml")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the file here instead of printing it.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of printing, check that this cron.yaml covers every declared cron group "
                   "(exit status 1 if not).")
@one_line_errors
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
@one_line_errors
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
@click.option("--queue-yaml", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="queue.yaml to apply (default: the QUEUE_YAML setting, deploy/queue.yaml).")
@click.option("--dry-run", is_flag=True, help="Print the queues that would be synced; change nothing.")
@one_line_errors
def sync_queues_command(queue_yaml: Path | None, dry_run: bool) -> None:
    """Create or update the Cloud Tasks queues of queue.yaml through the API."""
    runtime = current_app.extensions["core"]
    settings = runtime.settings
    if queue_yaml is not None and not queue_yaml.is_file():
        raise FileNotFoundError(2, "no such file", str(queue_yaml))
    queues = runtime.queues if queue_yaml is None else QueueTable.load(queue_yaml, default=settings.tasks_default_queue)
    if dry_run:
        for name, config in queues.items():
            click.echo(f"would sync {transports.queue_path(settings, name)}"
                       + (" (paused: rate 0)" if config.paused else ""))
        return
    for path in transports.sync_queues(settings, queues):
        click.echo(f"synced {path}")


@tasks_cli.command("run-local", with_appcontext=False)
@click.option("--port", type=int, default=None, help="Port of the app (default $PORT or 8080).")
@click.option("--server", type=click.Choice(SERVERS), default=None,
              help="HTTP server of the app (default $TASKS_SERVER, else gunicorn).")
@click.pass_context
@one_line_errors
def run_local_command(ctx: click.Context, port: int | None, server: str | None) -> None:
    """Serve this app on the local stack: Datastore emulator, local queue, gunicorn or granian, cron pings."""
    info = ctx.find_object(ScriptInfo)
    app = info.load_app() if info is not None else current_app._get_current_object()  # type: ignore[attr-defined]  # Flask types its proxy as the app
    devserver.run_local(gunicorn_target(app, info.app_import_path if info is not None else None), port=port,
                        server=server)


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
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@one_line_errors
def sync_scheduler_command(dry_run: bool, as_json: bool) -> None:
    """Create, update and delete the Cloud Scheduler jobs that ping the app's cron groups."""
    runtime = current_app.extensions["core"]
    changes = sync_scheduler(runtime.settings, runtime.registry, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "changes": [
            {"action": change.action, "job_id": change.job_id, "fields": list(change.fields),
             "schedule": change.spec.schedule if change.spec else None} for change in changes]}, indent=2))
        return
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
