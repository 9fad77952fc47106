"""The Flask extension: ``Tasks(app)`` or ``tasks.init_app(app)`` adds the task module to any Flask app.

It mounts the task handler at ``/_tasks`` and the dashboard at ``/_tasks/admin`` (plus any
ViUR-style modules given), keeps the app's :class:`TaskRuntime` in ``app.extensions["core"]``,
binds that runtime and its Datastore to every app context of the app (requests, CLI commands,
``with app.app_context():``), runs each request with ``core.current`` set and inside a task batch
(the deferred calls a request makes are created together before the response goes out, also for
error responses), and adds the ``flask tasks`` commands. Two apps in one process never share a
runtime: each context sees its own app's settings, queue and store.
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from flask import Flask, Request, Response, current_app, g, request
from flask.signals import appcontext_pushed

from core import current, db, devserver, request_bodies, safety, task_routes, trace
from core.admin import views as admin_views
from core.admin.dashboard import TaskAdmin
from core.cli import init_app as init_cli
from core.config import Settings
from core.logs import install_logging
from core.module import Module, ModuleTree

# Every room whose kinds and tasks are built in declares them on import: load them all here.
from core.tasks import callable as _callable  # noqa: F401
from core.tasks import outbox
from core.tasks.handler import CallablePages, TaskHandler
from core.tasks.periodic import kind as _periodic  # noqa: F401
from core.tasks.queryiter import chunk as _queryiter  # noqa: F401
from core.tasks.registry import TaskRegistry
from core.tasks.runtime import EnvironmentHandler, TaskRuntime, bind, runtime_of, unbind
from core.tasks.transports.base import Transport
from core.tasks.workflows.hook import install as install_workflows
from core.users import UserProvider

log = logging.getLogger(__name__)

#: A middleware as given: ``add_middleware`` returns it unchanged (decorator use).
M = TypeVar("M")

#: Chooses the language of a request (default: best match of Accept-Language among LANGUAGES).
LanguageSelector = Callable[[Request], str]

_TOKENS = "_core_task_runtime_tokens"


@dataclasses.dataclass
class AppState:
    """What the web side keeps for one app, on its runtime (``app.extensions["core"].app_state``).

    The app's one ``app.extensions`` entry is its runtime; this is the part of it only the web layer reads.
    """

    #: The ``Tasks`` object that set the app up.
    extension: Tasks
    #: The views behind ``/_tasks/list`` and ``/_tasks/execute/<taskID>``.
    callable_pages: CallablePages | None
    language_selector: LanguageSelector
    #: Whether this version's startup tasks are still to be queued (at the first request).
    startup_pending: bool
    #: Paths of the routes queues and schedulers push to.
    task_routes: task_routes.TaskRoutes


class Tasks:
    """The task module of one or more Flask apps (state lives on each app, not here).

    Every keyword given here is the default for :meth:`init_app`, which may override it per app.
    ``settings`` defaults to the app's own: ``app.config`` (``TASKS_*`` keys, ``SECRET_KEY``), the
    environment as the fallback (``core.config.Settings.from_config``).
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        self._middleware: list[tuple[Any, dict[str, str | None]]] = []
        self._runtimes: weakref.WeakSet[TaskRuntime] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def add_middleware(self, middleware: M, *, before: str | None = None, after: str | None = None,
                       name: str | None = None) -> M:
        """Add ``middleware`` to the task pipeline of every app of this extension, now and later.

        ``middleware`` is ``step(delivery, proceed)``, an object with such a ``step``, or a
        :class:`~core.tasks.TaskHook`; ``before=`` / ``after=`` name its neighbour (``"verify"``,
        ``"lifecycle"``, ... or one added earlier). See :mod:`core.tasks.middleware`.
        """
        placement = {"before": before, "after": after, "name": name}
        for runtime in list(self._runtimes):
            runtime.add_middleware(middleware, **placement)
        self._middleware.append((middleware, placement))
        return middleware

    def init_app(self, app: Flask, *, modules: Mapping[str, type[Module] | Module] | None = None,
                 settings: Settings | None = None, users: UserProvider | None = None,
                 environment: EnvironmentHandler | None = None, registry: TaskRegistry | None = None,
                 transport: Transport | None = None, languages: tuple[str, ...] | None = None,
                 language_selector: LanguageSelector | None = None,
                 admin_mail: Callable[[str, str], None] | None = None,
                 startup_tasks: bool | None = None, hooks: Iterable[Any] | None = None,
                 direct_pushes: bool | None = None) -> TaskRuntime:
        """Add the task module to ``app``; returns the app's runtime.

        Nothing here talks to the network: the Datastore and queue clients are built on first
        use, and this version's startup tasks are queued on a background thread at the app's
        first request (``startup_tasks=False`` turns that off, e.g. for tests that count tasks).
        A queue's pushes to ``/_tasks/deferred`` and ``queryIter`` skip Flask's request handling
        (:class:`~core.task_routes.DirectPushes`); ``direct_pushes=False`` sends them through Flask,
        for an app whose own request hooks must see them.
        """
        if "core" in app.extensions:
            raise RuntimeError(f"{app!r} already has the task module")
        given = {"modules": modules, "settings": settings, "users": users, "environment": environment,
                 "registry": registry, "transport": transport, "languages": languages,
                 "language_selector": language_selector, "admin_mail": admin_mail, "startup_tasks": startup_tasks,
                 "hooks": hooks, "direct_pushes": direct_pushes}
        opts = {**self.options, **{k: v for k, v in given.items() if v is not None}}
        settings = _checked(opts.get("settings") or Settings.from_config(app.config))
        install_logging(settings)
        modules = dict(opts.get("modules") or {})
        languages = tuple(opts.get("languages") or app.config.get("LANGUAGES") or ("en",))

        # The task handler and the dashboard are mounted in every app (an app may mount its own subclass).
        tree = ModuleTree({**modules, "_tasks": modules.get("_tasks", TaskHandler),
                           "_tasks/admin": modules.get("_tasks/admin", TaskAdmin)})
        runtime = TaskRuntime(settings, registry=opts.get("registry"), modules=tree, users=opts.get("users"),
                              environment=opts.get("environment"), transport=opts.get("transport"),
                              admin_mail=opts.get("admin_mail"), datastore=_datastore(settings),
                              hooks=opts.get("hooks") or ())
        install_workflows(runtime)  # groups and chains book their tasks through a hook
        for middleware, placement in self._middleware:
            runtime.add_middleware(middleware, **placement)
        self._runtimes.add(runtime)
        runtime.verifier  # noqa: B018 - a verifier that cannot work fails here, at start-up
        app.secret_key = app.secret_key or settings.secret_key
        app.config["LANGUAGES"] = languages
        runtime.app_state = AppState(
            extension=self, callable_pages=admin_views.PAGES,
            language_selector=opts.get("language_selector") or _accept_language(languages),
            startup_pending=opts.get("startup_tasks", True), task_routes=task_routes.init_app(app, tree))
        app.extensions["core"] = runtime
        admin_views.install_not_found_page(app)
        safety.init_app(app, settings)
        tree.register_routes(app)
        init_cli(app)
        appcontext_pushed.connect(_bind_app_context, app)
        app.teardown_appcontext(_unbind_app_context)
        app.before_request(_enter_request)
        app.after_request(_flush_request)
        app.teardown_request(_leave_request)
        # A body that stops arriving ends in 408, on Flask's routes and direct pushes alike.
        bodies = request_bodies.BodyDeadline(app.wsgi_app, settings.request_body_timeout)
        app.wsgi_app = bodies  # type: ignore[method-assign]
        if opts.get("direct_pushes", True):
            app.wsgi_app = task_routes.DirectPushes(app, bodies, task_routes.direct_paths(tree),  # type: ignore[method-assign]
                                                    bodies=bodies)
        return runtime

    @staticmethod
    def runtime(app: Flask) -> TaskRuntime:
        """The runtime of ``app`` (what ``get_runtime()`` returns inside its contexts)."""
        return runtime_of(app)


def _checked(settings: Settings) -> Settings:
    if settings.runtime == "local":
        return settings.with_local_secrets()
    if not settings.tasks_secret or not settings.secret_key:
        raise RuntimeError("TASKS_SECRET and SECRET_KEY must be set in production")
    return settings


def _datastore(settings: Settings) -> db.Datastore:
    """The app's store; a local app without an emulator host finds the running stack's on first use."""
    if settings.runtime == "local" and not settings.datastore_emulator_host:
        return devserver.local_datastore(settings)  # loaded on first use: production never loads it
    return db.Datastore.from_settings(settings)


def _bind_app_context(app: Flask, **_: Any) -> None:
    # Sent after Flask made the new context current, so ``g`` is the new context's.
    namespace = g._get_current_object()  # type: ignore[attr-defined]
    if not hasattr(namespace, _TOKENS):
        setattr(namespace, _TOKENS, bind(runtime_of(app)))


def _unbind_app_context(error: BaseException | None) -> None:
    token = g.pop(_TOKENS, None)
    if token is not None:
        unbind(token)


def _enter_request() -> None:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    req = request._get_current_object()  # type: ignore[attr-defined]
    safety.refuse_large_body(req, app.config[safety.LIMIT_KEY])  # first: nothing else runs for it
    runtime = app.extensions["core"]
    state: AppState = runtime.app_state
    task_routes.queue_startup_tasks_once(app)
    environ = req.environ
    if req.path in state.task_routes:
        # A queue's push: the executor restores the caller's user and language from the envelope.
        user, language = None, app.config["LANGUAGES"][0]
    else:
        user, language = runtime.users.load_from_request(req), state.language_selector(req)
    current.enter(request=req, user=user, language=language, trace=trace.from_environ(environ))
    scope = outbox.RequestScope(runtime)
    scope.__enter__()
    environ["core.task_scope"] = scope


def _flush_request(response: Response) -> Response:
    scope = request.environ.pop("core.task_scope", None)
    if scope is not None:
        # Creates every task this request deferred (or keeps it in the outbox) before answering.
        scope.__exit__(None, None, None)
    return safety.secure(response)


def _leave_request(error: BaseException | None) -> None:
    scope = request.environ.pop("core.task_scope", None)
    if scope is not None:  # after_request did not run; what was deferred is still created
        try:
            scope.__exit__(None, None, None)
        except Exception:
            log.exception("could not create the tasks this request deferred")
    current.enter()  # nothing of this request stays behind


def _accept_language(languages: tuple[str, ...]) -> LanguageSelector:
    def select(req: Request) -> str:
        explicit = req.args.get("lang")
        if explicit in languages:
            return str(explicit)
        return str(req.accept_languages.best_match(languages) or languages[0])
    return select
