"""The files ``flask tasks init`` writes into a user's project, and what the local stack misses without them.

``queue.yaml`` (a starter: the default queue and the priority queues), ``cron.yaml`` (generated from
the app's periodic tasks) and the ``.gitignore`` lines that keep ``.local-data/`` (local secrets,
queue database, emulator data) out of git. Existing ``queue.yaml`` / ``cron.yaml`` are never
overwritten; ``.gitignore`` only gets the lines it lacks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

STARTER_QUEUE_YAML = """\
# Push queues of this app (App Engine's queue.yaml format). The local queue reads it as it is;
# `flask tasks sync-queues` creates the same queues in Cloud Tasks. Fields left out take App
# Engine's defaults (rate 5/s, no retry limit, backoff 0.1 s .. 1 h).
queue:
# Deferred calls that name no queue.
- name: default
  rate: 100/s
  bucket_size: 100
  retry_parameters:
    task_retry_limit: 30
    task_age_limit: 1d
    min_backoff_seconds: 0.1
    max_backoff_seconds: 3600
# @callDeferred(priority="high") and priority="low" (TASKS_PRIORITY_QUEUES).
- name: high
  rate: 200/s
  bucket_size: 200
  retry_parameters:
    task_retry_limit: 30
    min_backoff_seconds: 0.1
    max_backoff_seconds: 600
- name: low
  rate: 10/s
  bucket_size: 10
  retry_parameters:
    task_retry_limit: 10
    min_backoff_seconds: 10
    max_backoff_seconds: 3600
"""

#: What ``.gitignore`` must hold: the local stack's data folder keeps the generated secrets.
GITIGNORE_LINES = (".local-data/",)
GITIGNORE_COMMENT = "# local task stack: emulator data, queue database and generated secrets"


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """One file of the scaffold: its path, the text to write (or append) and whether it appends."""

    path: Path
    text: str
    append: bool = False

    def describe(self) -> str:
        return f"{'append to' if self.append else 'write'} {self.path.name}"


def gitignore_addition(path: Path) -> str:
    """The lines ``path`` (a ``.gitignore``, maybe missing) still lacks, with a comment; ``""`` if none."""
    present = set(path.read_text(encoding="utf-8").splitlines()) if path.exists() else set()
    missing = [line for line in GITIGNORE_LINES if line not in present and line.rstrip("/") not in present]
    if not missing:
        return ""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    lead = "\n" if existing and not existing.endswith("\n") else ""
    return lead + "\n".join([GITIGNORE_COMMENT, *missing]) + "\n"


def plan_scaffold(root: Path, cron_yaml_text: str) -> tuple[list[PlannedFile], list[Path]]:
    """``(files to write, existing files refused)`` for the project at ``root``."""
    planned: list[PlannedFile] = []
    refused: list[Path] = []
    for name, text in (("queue.yaml", STARTER_QUEUE_YAML), ("cron.yaml", cron_yaml_text)):
        path = root / name
        if path.exists():
            refused.append(path)
        else:
            planned.append(PlannedFile(path, text))
    addition = gitignore_addition(root / ".gitignore")
    if addition:
        planned.append(PlannedFile(root / ".gitignore", addition, append=(root / ".gitignore").exists()))
    return planned, refused


def write_scaffold(planned: list[PlannedFile]) -> None:
    """Write (or append) every planned file; a file that appeared meanwhile is not overwritten."""
    for item in planned:
        if item.append:
            with item.path.open("a", encoding="utf-8") as out:
                out.write(item.text)
        else:
            with item.path.open("x", encoding="utf-8") as out:
                out.write(item.text)


def missing_file_notes(queue_yaml: Path, cron_yaml: Path) -> list[str]:
    """What the local stack cannot do without ``queue_yaml`` / ``cron_yaml``, and how to fix it."""
    notes = []
    if not cron_yaml.exists():
        notes.append(f"no {cron_yaml}: periodic tasks never run locally (nothing pings their cron groups). "
                     "Write one with `flask --app <app> tasks init` (or `tasks cron-yaml -o cron.yaml`).")
    if not queue_yaml.exists():
        notes.append(f"no {queue_yaml}: only the `default` queue exists, with App Engine's default retries; a "
                     "call to any other queue (or priority='high'/'low') fails. `flask --app <app> tasks init` "
                     "writes a starter queue.yaml.")
    return notes
