"""``flask tasks dead-letters list|retry|discard``: the given-up tasks, one at a time or in bulk.

Filters select by target, queue, error type and age; ``retry`` and ``discard`` act in batches, each
one transaction, so a run stopped part-way is finished by running it again (no letter is sent
twice, none is lost). What writes has ``--dry-run``; what lists has ``--json``.
"""
from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import AppGroup

from core.cli_errors import one_line_errors
from core.tasks import deadletters
from core.tasks.queues import parse_age
from core.tasks.runtime import get_runtime

dead_letters_cli = AppGroup("dead-letters", help="List, retry or discard dead letters (given-up tasks), in bulk.")


def _age(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime.timedelta | None:
    if value is None:
        return None
    try:
        return parse_age(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a duration like 30m, 2h or 1d") from None


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--target", default=None, help="Only letters of this task target (module.function)."),
        click.option("--queue", default=None, help="Only letters of this queue."),
        click.option("--error-type", default=None, help="Only letters whose error is of this class (OSError)."),
        click.option("--older-than", default=None, callback=_age, help="Only letters at least this old (2h, 1d)."),
    ]):
        command = option(command)
    return command


def _selection(target: str | None, queue: str | None, error_type: str | None,
               older_than: datetime.timedelta | None) -> deadletters.LetterFilter:
    return deadletters.LetterFilter(target=target, queue=queue, error_type=error_type, older_than=older_than)


@dead_letters_cli.command("list")
@selection_options
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="Letters to show at most.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@one_line_errors
def list_command(target: str | None, queue: str | None, error_type: str | None,
                 older_than: datetime.timedelta | None, limit: int, as_json: bool) -> None:
    """The dead letters the filters select, oldest first."""
    rows = []
    for letter in deadletters.matching(_selection(target, queue, error_type, older_than)):
        described = deadletters.describe(letter)
        rows.append({key: described[key] for key in ("id", "task_id", "target", "queue", "attempts", "error")}
                    | {"created": described["created"].isoformat() if described["created"] else None})
        if len(rows) >= limit:
            break
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        error = " ".join(str(row["error"] or "").split())[:100]
        click.echo(f"{row['id']:<20} {row['created'] or '':<33} {row['target'] or '?':<40} {error}")
    if not rows:
        click.echo("no dead letter matches")


def _act(action: str, selection: deadletters.LetterFilter, dry_run: bool, yes: bool, batch_size: int) -> None:
    runtime = get_runtime()
    count = sum(1 for _ in deadletters.matching(selection))
    if dry_run or not count:
        click.echo(f"would {action} {count} dead letter(s): {selection.describe()}" if dry_run
                   else f"no dead letter matches: {selection.describe()}")
        return
    if not yes:
        click.confirm(f"{action.capitalize()} {count} dead letter(s) ({selection.describe()})?", abort=True)
    label = "Retrying" if action == "retry" else "Discarding"
    with click.progressbar(length=count, label=label, file=sys.stderr) as bar:
        result = deadletters.bulk(runtime, action, selection, batch_size=batch_size, progress=bar.update)
    verb = "retried" if action == "retry" else "discarded"
    click.echo(f"{verb} {result.done} dead letter(s)")
    for reason in result.refused:
        click.echo(f"kept: {reason}", err=True)
    if result.refused:
        raise SystemExit(1)


@dead_letters_cli.command("retry")
@selection_options
@click.option("--dry-run", is_flag=True, help="Say how many would be retried; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--batch-size", type=click.IntRange(1, deadletters.BULK_BATCH), default=deadletters.BULK_BATCH,
              show_default=True, help="Letters per transaction.")
@one_line_errors
def retry_command(target: str | None, queue: str | None, error_type: str | None,
                  older_than: datetime.timedelta | None, dry_run: bool, yes: bool, batch_size: int) -> None:
    """Send the selected dead letters again, each with a fresh retry budget."""
    _act("retry", _selection(target, queue, error_type, older_than), dry_run, yes, batch_size)


@dead_letters_cli.command("discard")
@selection_options
@click.option("--dry-run", is_flag=True, help="Say how many would be discarded; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--batch-size", type=click.IntRange(1, deadletters.BULK_BATCH), default=deadletters.BULK_BATCH,
              show_default=True, help="Letters per transaction.")
@one_line_errors
def discard_command(target: str | None, queue: str | None, error_type: str | None,
                    older_than: datetime.timedelta | None, dry_run: bool, yes: bool, batch_size: int) -> None:
    """Delete the selected dead letters for good."""
    _act("discard", _selection(target, queue, error_type, older_than), dry_run, yes, batch_size)
