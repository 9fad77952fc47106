"""The local stack any app module runs on: Datastore emulator, local queue, gunicorn, cron pings.

``python -m core.devserver myapp:app`` or ``flask --app myapp tasks run-local`` starts it;
:class:`LocalStack` is what tests and benchmarks start on free ports.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS = {"LocalStack": "core.devserver.stack", "run_local": "core.devserver.stack",
            "read_state": "core.devserver.stack", "DatastoreEmulator": "core.devserver.datastore_emulator",
            "start_datastore_emulator": "core.devserver.datastore_emulator",
            "local_datastore": "core.devserver.locate"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from core.devserver.datastore_emulator import DatastoreEmulator, start_datastore_emulator
    from core.devserver.locate import local_datastore
    from core.devserver.stack import LocalStack, read_state, run_local
