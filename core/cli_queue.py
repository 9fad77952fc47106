"""``flask tasks queue ...``: pause, resume, purge, list and run-now the app's queues.

Each command answers a refusal (an unknown queue, missing credentials, an unreachable endpoint)
with one line and exit status 1, never a traceback; what writes has ``--dry-run``; what lists has
``--json``.
"""
from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from core.cli_errors import one_line_errors
from core.tasks import queue_admin
from core.tasks.runtime import get_runtime

queue_cli = AppGroup("queue", help="Pause, resume, purge and inspect the app's queues (any backend).")


@queue_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def status_command(as_json: bool) -> None:
    """Every queue of the app: paused or not, its rate, and how many tasks wait (where countable)."""
    rows = queue_admin.statuses(get_runtime())
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    for row in rows:
        state = "paused (queue.yaml rate 0)" if row.paused_by_config else "paused" if row.paused else "running"
        waiting = "" if row.waiting is None else f"  {row.waiting} waiting"
        click.echo(f"{row.name:<24} {state:<26} {row.rate:>8}{waiting}")


def _set_paused(queue: str, paused: bool, dry_run: bool) -> None:
    runtime = get_runtime()
    queue_admin.known_queue(runtime, queue)
    verb = "pause" if paused else "resume"
    if dry_run:
        click.echo(f"would {verb} queue {queue}")
        return
    (queue_admin.pause if paused else queue_admin.resume)(runtime, queue)
    click.echo(f"{verb}d queue {queue}")


@queue_cli.command("pause")
@click.argument("queue")
@click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing.")
@one_line_errors
def pause_command(queue: str, dry_run: bool) -> None:
    """Stop pushing QUEUE's tasks; they stay queued (and new ones are accepted) until resumed."""
    _set_paused(queue, True, dry_run)


@queue_cli.command("resume")
@click.argument("queue")
@click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing.")
@one_line_errors
def resume_command(queue: str, dry_run: bool) -> None:
    """Push QUEUE's tasks again."""
    _set_paused(queue, False, dry_run)


@queue_cli.command("purge")
@click.argument("queue")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@one_line_errors
def purge_command(queue: str, dry_run: bool, yes: bool) -> None:
    """Delete every task QUEUE holds (a push under way finishes)."""
    runtime = get_runtime()
    queue_admin.known_queue(runtime, queue)
    if dry_run:
        listed = sum(1 for _ in queue_admin.iter_tasks(runtime, queue))
        click.echo(f"would purge queue {queue}: {listed} task(s) listed now")
        return
    if not yes:
        click.confirm(f"Delete every task of queue {queue}?", abort=True)
    purged = queue_admin.purge(runtime, queue)
    click.echo(f"purged queue {queue}" + ("" if purged is None else f": {purged} task(s) deleted"))


@queue_cli.command("list")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Tasks per page.")
@click.option("--cursor", default=None, help="The cursor a previous page printed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def list_command(queue: str, limit: int, cursor: str | None, as_json: bool) -> None:
    """The tasks QUEUE holds, by schedule time, a page at a time."""
    listings, next_cursor = queue_admin.list_tasks(get_runtime(), queue, limit=limit, cursor=cursor)
    if as_json:
        click.echo(json.dumps({"tasks": [queue_admin.describe(item) for item in listings], "cursor": next_cursor},
                              indent=2))
        return
    for item in listings:
        row = queue_admin.describe(item)
        click.echo(f"{row['name']:<34} {row['state']:<8} attempts={row['attempts']:<3} "
                   f"{row['schedule_time'] or 'now':<33} {row['target'] or row['path']}")
    if not listings:
        click.echo(f"queue {queue} holds no task")
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}")


@queue_cli.command("run")
@click.argument("queue")
@click.argument("task_name")
@click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing.")
@one_line_errors
def run_command(queue: str, task_name: str, dry_run: bool) -> None:
    """Push the task TASK_NAME of QUEUE now, whatever its schedule time."""
    runtime = get_runtime()
    queue_admin.known_queue(runtime, queue)
    if dry_run:
        click.echo(f"would run task {task_name} of queue {queue} now")
        return
    if not queue_admin.run_now(runtime, queue, task_name):
        raise click.ClickException(f"queue {queue} holds no task {task_name} that can run now")
    click.echo(f"task {task_name} of queue {queue} runs now")
