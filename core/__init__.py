"""A ViUR-style deferred task module for Flask apps on App Engine and Cloud Run.

``core.Tasks(app)`` adds the task module to a Flask app; ``core.create_app`` builds one from a
ViUR-style module tree; ``core.tasks`` holds the task API; ``core.db`` wraps
Datastore; ``core.json`` is the tagged JSON codec; ``core.current`` the request/task context.
Names load on first use, so importing one room (e.g. the local queue) does not import Flask.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS = {"create_app": "core.app", "Tasks": "core.extension", "Module": "core.module", "exposed": "core.module"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from core.app import create_app
    from core.extension import Tasks
    from core.module import Module, exposed
