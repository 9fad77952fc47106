"""The app factory of a ViUR-style module tree: a Flask app with :class:`core.extension.Tasks` on it.

``create_app(modules)`` builds the Flask app and hands every option to ``Tasks.init_app``; a plain
Flask app uses ``Tasks(app)`` directly. State lives in ``app.extensions["core"]`` (the
:class:`TaskRuntime`), bound to each of the app's contexts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask

from core.config import Settings
from core.extension import LanguageSelector, Tasks
from core.module import Module
from core.tasks.registry import TaskRegistry
from core.tasks.runtime import EnvironmentHandler, runtime_of
from core.tasks.transports.base import Transport
from core.users import UserProvider

__all__ = ["LanguageSelector", "create_app", "runtime_of"]


def create_app(modules: Mapping[str, type[Module] | Module], *, settings: Settings | None = None,
               users: UserProvider | None = None, environment: EnvironmentHandler | None = None,
               registry: TaskRegistry | None = None, transport: Transport | None = None,
               languages: tuple[str, ...] = ("en",), language_selector: LanguageSelector | None = None,
               admin_mail: Callable[[str, str], None] | None = None, import_name: str = "core",
               startup_tasks: bool = True, hooks: Iterable[Any] = ()) -> Flask:
    """Build the Flask app: routes of every module plus the task handler at ``/_tasks``."""
    app = Flask(import_name)
    Tasks(app, modules=modules, settings=settings, users=users, environment=environment, registry=registry,
          transport=transport, languages=languages, language_selector=language_selector,
          admin_mail=admin_mail, startup_tasks=startup_tasks, hooks=hooks)
    return app
