"""The app factory: a Flask app from a module tree, settings and a few pluggable parts.

State lives in ``app.extensions["core"]`` (the :class:`TaskRuntime`), as Flask extensions do.
Each request runs with ``core.current`` set (request, user, language) and inside a task batch:
the deferred calls it makes are created together, concurrently, before the response goes out
(also for error responses: a call that was made is queued, as with App Engine's own queues).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request

from core import current, db
from core.admin.dashboard import TaskAdmin
from core.cli import init_app as init_cli
from core.config import Settings, get_settings
from core.module import Module, ModuleTree

# Every room whose tasks the handler runs registers its runners on import: load them all here.
from core.tasks import callable as _callable  # noqa: F401
from core.tasks import dispatch
from core.tasks import executor as _executor  # noqa: F401
from core.tasks import periodic as _periodic  # noqa: F401
from core.tasks import queryiter as _queryiter  # noqa: F401
from core.tasks.handler import TaskHandler
from core.tasks.registry import TaskRegistry
from core.tasks.runtime import EnvironmentHandler, TaskRuntime, activate
from core.tasks.startup import runStartupTasks
from core.tasks.transports.base import Transport
from core.users import UserProvider

log = logging.getLogger(__name__)

#: Chooses the language of a request (default: best match of Accept-Language among LANGUAGES).
LanguageSelector = Callable[[Any], str]


def create_app(modules: Mapping[str, type[Module] | Module], *, settings: Settings | None = None,
               users: UserProvider | None = None, environment: EnvironmentHandler | None = None,
               registry: TaskRegistry | None = None, transport: Transport | None = None,
               languages: tuple[str, ...] = ("en",), language_selector: LanguageSelector | None = None,
               admin_mail: Callable[[str, str], None] | None = None, import_name: str = "core",
               startup_tasks: bool = True) -> Flask:
    """Build the Flask app: routes of every module plus the task handler at ``/_tasks``.

    Nothing here talks to the network: the Datastore and queue clients are built on first use,
    and this version's startup tasks are queued on a background thread at the first request
    (``startup_tasks=False`` turns that off, e.g. for tests that count queued tasks).
    """
    settings = settings or get_settings()
    if settings.runtime == "local":
        settings = settings.with_local_secrets()
    elif not settings.tasks_secret or not settings.secret_key:
        raise RuntimeError("TASKS_SECRET and SECRET_KEY must be set in production")
    db.configure(settings)

    # The task handler and the dashboard are mounted in every app (an app may mount its own subclass).
    tree = ModuleTree({**modules, "_tasks": modules.get("_tasks", TaskHandler),
                       "_tasks/admin": modules.get("_tasks/admin", TaskAdmin)})
    runtime = TaskRuntime(settings, registry=registry, modules=tree, users=users, environment=environment,
                          transport=transport, admin_mail=admin_mail)
    runtime.verifier  # noqa: B018 - a verifier that cannot work fails here, at start-up
    activate(runtime)

    app = Flask(import_name)
    app.secret_key = settings.secret_key
    app.config["LANGUAGES"] = languages
    app.extensions["core"] = runtime
    app.extensions["core.modules"] = tree
    select_language = language_selector or _accept_language(languages)
    tree.register_routes(app)
    init_cli(app)
    startup_pending = [startup_tasks]

    @app.before_request
    def _enter() -> None:
        activate(runtime)
        if startup_pending[0]:
            startup_pending[0] = False
            runStartupTasks(runtime, background=True)
        current.request.set(request)
        current.user.set(runtime.users.load_from_request(request))
        current.language.set(select_language(request))
        scope = dispatch.request_scope(runtime)
        scope.__enter__()
        request.environ["core.task_scope"] = scope

    @app.after_request
    def _flush(response: Response) -> Response:
        scope = request.environ.pop("core.task_scope", None)
        if scope is not None:
            # Creates every task this request deferred (or keeps it in the outbox) before answering.
            scope.__exit__(None, None, None)
        return response

    @app.teardown_request
    def _leave(error: BaseException | None) -> None:
        scope = request.environ.pop("core.task_scope", None)
        if scope is not None:  # after_request did not run; what was deferred is still created
            try:
                scope.__exit__(None, None, None)
            except Exception:
                log.exception("could not create the tasks this request deferred")
        current.user.set(None)
        current.request.set(None)

    return app


def _accept_language(languages: tuple[str, ...]) -> LanguageSelector:
    def select(req: Any) -> str:
        explicit = req.args.get("lang")
        if explicit in languages:
            return str(explicit)
        return str(req.accept_languages.best_match(languages) or languages[0])
    return select


def runtime_of(app: Flask) -> TaskRuntime:
    return app.extensions["core"]  # type: ignore[no-any-return]
