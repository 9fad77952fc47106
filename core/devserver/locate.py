"""Finding the Datastore emulator of a local app that runs outside the stack (CLI, scripts, a shell).

A local app started without ``DATASTORE_EMULATOR_HOST`` (``flask --app main users create ...``)
uses the emulator of the stack running on the same data folder (its ``stack.json``). When none
runs, a CLI command starts the emulator on that folder's data for its own duration; anything else
gets an error that says what to start.
"""
from __future__ import annotations

import logging
import sys
import urllib.request
from pathlib import Path
from typing import Any

import click

from core import db
from core.config import Settings
from core.devserver.datastore_emulator import start_datastore_emulator
from core.devserver.stack import read_state
from core.tasks.errors import ConfigurationError

log = logging.getLogger(__name__)

START_HINT = ("start the local stack (`python main.py`, `python -m core.devserver module:app` or "
              "`flask --app module tasks run-local`) or set DATASTORE_EMULATOR_HOST")


def local_datastore(settings: Settings) -> db.Datastore:
    return LocalDatastore(settings.project, settings.namespace, data_dir=settings.local_data_dir)


class LocalDatastore(db.Datastore):
    """A store whose emulator host is looked up when the client is first needed, not at start-up."""

    def __init__(self, project: str, namespace: str | None = None, *, data_dir: Path) -> None:
        super().__init__(project, namespace, None)
        self.data_dir = data_dir

    def _build_client(self) -> Any:
        if not self.emulator_host:
            self.emulator_host = find_or_start_emulator(self.data_dir)
        return super()._build_client()


def running_emulator(data_dir: Path) -> str | None:
    """The emulator host of the stack running on ``data_dir``, if it answers."""
    state = read_state(data_dir)
    host = state.get("datastore_emulator_host") if state else None
    if not isinstance(host, str):
        return None
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=2) as response:
            return host if response.read().strip() == b"Ok" else None
    except OSError:
        return None


def find_or_start_emulator(data_dir: Path) -> str:
    host = running_emulator(data_dir)
    if host is not None:
        return host
    context = click.get_current_context(silent=True)
    if context is None:
        raise ConfigurationError(f"no Datastore emulator runs for {data_dir}: {START_HINT}")
    # A CLI command without the stack: serve the stack's own data while the command runs.
    emulator = start_datastore_emulator(data_dir=data_dir / "datastore", persist=True)
    context.find_root().call_on_close(emulator.stop)
    print(f"started the Datastore emulator on {emulator.host} for this command (data in {data_dir / 'datastore'})",
          file=sys.stderr)
    return emulator.host
