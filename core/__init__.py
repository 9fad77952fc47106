"""A ViUR-style deferred task module for Flask apps on App Engine and Cloud Run.

``core.create_app`` builds the app; ``core.tasks`` holds the task API; ``core.db`` wraps
Datastore; ``core.json`` is the tagged JSON codec; ``core.current`` the request/task context.
"""
from __future__ import annotations

from core.app import create_app
from core.module import Module, exposed

__all__ = ["create_app", "Module", "exposed"]
