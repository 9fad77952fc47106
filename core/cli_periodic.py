"""``flask tasks periodic list|pause|resume|run``: the app's periodic tasks and their run-time controls."""
from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from core.cli_errors import one_line_errors
from core.tasks.periodic import controls
from core.tasks.periodic.kind import periodic_overview
from core.tasks.runtime import get_runtime

periodic_cli = AppGroup("periodic", help="List periodic tasks; pause, resume or run one now.")


@periodic_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@one_line_errors
def list_command(as_json: bool) -> None:
    """Every periodic task: its cron group, schedule, next due time, and whether it is paused."""
    rows = periodic_overview(get_runtime())
    if as_json:
        keys = ("name", "cron", "schedule", "next_due", "paused", "pending", "runs", "failures", "last_success")
        click.echo(json.dumps([{key: row.get(key) for key in keys} for row in rows], indent=2, default=str))
        return
    for row in rows:
        state = "paused" if row.get("paused") else "queued" if row.get("pending") else ""
        click.echo(f"{row['name']:<48} {row.get('cron') or 'default':<12} {row.get('schedule') or '':<24} {state}")
    if not rows:
        click.echo("no periodic task is declared")


def _control(name: str, paused: bool, dry_run: bool) -> None:
    verb = "pause" if paused else "resume"
    runtime = get_runtime()
    if dry_run:
        known = {row["name"] for row in periodic_overview(runtime)}
        if name not in known:
            raise click.ClickException(f"there is no periodic task {name!r}")
        click.echo(f"would {verb} {name}")
        return
    changed = controls.set_paused(runtime, name, paused, by="flask tasks periodic")
    done = "paused" if paused else "resumed"
    click.echo(f"{done} {name}" if changed else f"{name} was {done} already")


@periodic_cli.command("pause")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing.")
@one_line_errors
def pause_command(name: str, dry_run: bool) -> None:
    """Stop every cron ping (and run-now) from running NAME until it is resumed."""
    _control(name, True, dry_run)


@periodic_cli.command("resume")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing.")
@one_line_errors
def resume_command(name: str, dry_run: bool) -> None:
    """Let cron pings run NAME again (it runs at the next ping if its slot passed meanwhile)."""
    _control(name, False, dry_run)


@periodic_cli.command("run")
@click.argument("name")
@one_line_errors
def run_command(name: str) -> None:
    """Queue NAME to run now, whether it is due or not (not while it is paused)."""
    outcome = controls.run_now(get_runtime(), name)
    if outcome == controls.PAUSED:
        raise click.ClickException(f"{name} is paused: resume it first")
    click.echo(f"{name} queued to run now" if outcome == controls.ENQUEUED
               else f"{name} is queued or running already")
