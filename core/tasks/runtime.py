"""The task runtime: everything the task layer needs from the app, in one replaceable object.

The Flask extension (``core.extension.Tasks``) builds one per app, keeps it in
``app.extensions["core"]`` and binds it to a context variable for every app context (requests, CLI
commands, ``with app.app_context():``), so two apps in one process each use their own; tests can
build their own and bind them with :meth:`TaskRuntime.bound`. Nothing here imports Flask, and
nothing talks to the network: the transport, the request verifier and the Datastore client are
built lazily from the settings.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from core import clock as app_clock
from core import db
from core.clock import Clock
from core.tasks import transports
from core.tasks.auth.policy import RequestVerifier
from core.tasks.auth.signing import SigningKeys
from core.tasks.errors import ConfigurationError
from core.tasks.hooks import as_middleware, check_hooks
from core.tasks.metrics import TaskMetrics, outcome_name
from core.tasks.middleware import Pipeline
from core.tasks.queues import QueueTable
from core.tasks.registry import TaskRegistry, redirected_registry
from core.tasks.telemetry import TracerLookup
from core.users import AnonymousUsers, UserProvider

if TYPE_CHECKING:
    from core.config import Settings
    from core.tasks.outcome import Outcome
    from core.tasks.transports.base import Transport

log = logging.getLogger(__name__)

#: A hook or middleware as given: ``add_hook`` / ``add_middleware`` return it unchanged (decorator use).
H = TypeVar("H")
M = TypeVar("M")


class InstanceLocator(Protocol):
    """The module tree as the task layer sees it (``core.module.ModuleTree`` satisfies it)."""

    def get(self, path: str) -> Any | None: ...
    def path_of(self, instance: object) -> str | None: ...
    def instances_of(self, cls: type) -> list[Any]: ...


class EnvironmentHandler(Protocol):
    """Custom request environment carried into tasks (ViUR's ``viur.tasks.customEnvironmentHandler``)."""

    def serialize(self) -> Any:
        """A JSON-encodable snapshot of the caller's environment (``core.json`` types allowed)."""
        ...

    def restore(self, data: Any) -> None:
        """Re-establish the snapshot inside the task."""
        ...


class Background:
    """The app's threads for work after a response (a large batch created from the outbox)."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker, in a copy of the caller's context (its app, its store)."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="task-outbox")
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, fn, *args)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until the work submitted so far is done (tests, shutdown)."""
        concurrent.futures.wait(list(self._futures), timeout=timeout)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class TaskRuntime:
    """Settings, registry, live modules, users and the queue transport of one app."""

    def __init__(self, settings: Settings, *, registry: TaskRegistry | None = None,
                 modules: InstanceLocator | None = None, users: UserProvider | None = None,
                 environment: EnvironmentHandler | None = None,
                 transport: Transport | None = None,
                 admin_mail: Callable[[str, str], None] | None = None,
                 datastore: db.Datastore | None = None, hooks: Iterable[Any] = (),
                 clock: Clock | None = None) -> None:
        self.settings = settings
        #: The app's clock: every countdown, backoff, age limit, lease, TTL and due time reads it
        #: (the wall clock; the test plugin puts its ``TestClock`` here).
        self.clock: Clock = clock if clock is not None else app_clock.WALL_CLOCK
        #: The app's own Datastore (project, namespace, emulator of its settings).
        self.datastore = datastore if datastore is not None else db.Datastore.from_settings(settings)
        #: The app's registry: everything the code declared (or the one given), with the built-ins.
        self.registry = (registry if registry is not None else redirected_registry() or TaskRegistry.declared())
        self.registry.install_builtins()
        self.modules = modules
        self.users: UserProvider = users or AnonymousUsers()
        self.environment = environment
        self.admin_mail = admin_mail
        #: Called with every :class:`Outcome` the executor produces (tests, metrics, admin pages).
        self.outcome_listeners: list[Callable[[Outcome], None]] = []
        #: App-wide task hooks (see :mod:`core.tasks.hooks`), in the order they run before a task.
        self.hooks: list[Any] = []
        for hook in hooks:
            self.add_hook(hook)
        #: The app's task pipeline: the built-in middleware and the app's own (:meth:`add_middleware`).
        self.pipeline: Pipeline[Any] = Pipeline(self.registry.middleware)
        self.background = Background()
        #: The app's task metrics (:mod:`core.tasks.metrics`), counted from every outcome.
        self.metrics = TaskMetrics(self.background.submit)
        #: Whether (and with which tracer) the app's enqueues make OpenTelemetry spans.
        self.tracing = TracerLookup()
        self.outcome_listeners.append(self._count)
        #: What the web layer keeps for this app (``core.extension.AppState``), set by ``Tasks.init_app``.
        self.app_state: Any = None
        self._transport = transport
        self._queues: QueueTable | None = None
        self._verifier: RequestVerifier | None = None
        self._signing: tuple[str, SigningKeys] | None = None
        self._lock = threading.Lock()

    @property
    def queues(self) -> QueueTable:
        """The app's queues, read once from ``settings.queue_yaml``: every transport and check asks this table."""
        if self._queues is None:
            with self._lock:
                if self._queues is None:
                    self._queues = QueueTable.load(self.settings.queue_yaml,
                                                   default=self.settings.tasks_default_queue)
        return self._queues

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            queues = self.queues
            with self._lock:
                if self._transport is None:
                    self._transport = build_transport(self.settings, queues)
        return self._transport

    @property
    def verifier(self) -> RequestVerifier:
        if self._verifier is None:
            self._verifier = RequestVerifier(self.settings)
        return self._verifier

    @property
    def signing_keys(self) -> SigningKeys:
        """The keys of ``settings.tasks_secret`` that sign what the app sends, prepared once per secret:
        made again when the settings name another secret."""
        secret = self.settings.tasks_secret
        signing = self._signing
        if signing is None or signing[0] != secret:
            signing = self._signing = (secret, SigningKeys(secret))
        return signing[1]

    def add_hook(self, hook: H) -> H:
        """Run ``hook`` around every task of this app (after the hooks added before it)."""
        self.hooks.extend(check_hooks([hook], "add_hook"))
        return hook

    def _count(self, outcome: Outcome) -> None:
        # Metrics are kept per queue: a request that named none has no row to count in.
        if outcome.target is not None and outcome.info is not None and outcome.info.queue is not None:
            self.metrics.ran(outcome.info.queue, outcome.target, outcome_name(outcome), outcome.duration)

    def add_middleware(self, middleware: M, *, before: str | None = None, after: str | None = None,
                       name: str | None = None) -> M:
        """Run ``middleware`` in this app's task pipeline, before or after the one named so.

        ``middleware`` is ``step(delivery, proceed)``, an object with such a ``step``, or a
        :class:`~core.tasks.hooks.TaskHook`; see :mod:`core.tasks.middleware`.
        """
        self.pipeline.add(as_middleware(middleware), before=before, after=after, name=name)
        return middleware

    def notify(self, outcome: Outcome) -> None:
        for listener in list(self.outcome_listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("outcome listener %r failed", listener)

    @contextlib.contextmanager
    def bound(self) -> Iterator[TaskRuntime]:
        """Make this runtime (and its Datastore) the current one inside the block, in this context."""
        token = bind(self)
        try:
            yield self
        finally:
            unbind(token)

    def close(self) -> None:
        self.background.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.datastore.close()


def build_transport(settings: Settings, queues: QueueTable) -> Transport:
    """The transport the settings ask for (``local``, ``cloudtasks`` or ``inline``), over the app's queues."""
    # Each transport is imported only when chosen: a production app never loads the local queue or
    # the test queue, and a local one never loads the Cloud Tasks client.
    backend = settings.tasks_backend
    if backend == "local":
        return transports.LocalTransport(transports.LocalQueueStore(local_queue_path(settings), queues=queues))
    if backend == "cloudtasks":
        return transports.CloudTasksTransport(settings, queues=queues)
    if backend == "inline":
        return transports.InlineTransport(queues)
    raise ConfigurationError(f"unknown TASKS_BACKEND {backend!r}: use local, cloudtasks or inline")


def local_queue_path(settings: Settings) -> Any:
    return settings.local_data_dir / "queue.sqlite3"


_current: contextvars.ContextVar[TaskRuntime | None] = contextvars.ContextVar("core_task_runtime", default=None)

#: What :func:`bind` returns and :func:`unbind` takes back.
BindToken = tuple["contextvars.Token[TaskRuntime | None]", Any, Any]


def bind(runtime: TaskRuntime) -> BindToken:
    """Make ``runtime``, its Datastore and its clock current in this context; undo with :func:`unbind`."""
    return _current.set(runtime), db.bind(runtime.datastore), app_clock.bind(runtime)


def unbind(token: BindToken) -> None:
    runtime_token, store_token, clock_token = token
    app_clock.unbind(clock_token)
    db.unbind(store_token)
    _current.reset(runtime_token)


def current_runtime() -> TaskRuntime | None:
    """The runtime of the current app context, or ``None`` outside one."""
    return _current.get()


def get_runtime() -> TaskRuntime:
    """The runtime of the current app: inside a request, a task, a CLI command or ``app.app_context()``."""
    runtime = _current.get()
    if runtime is None:
        raise ConfigurationError("no task runtime here: defer calls inside a request or a CLI command of an app "
                                 "with Tasks(app) (or create_app), or inside `with app.app_context():`")
    return runtime


def runtime_of(app: Any) -> TaskRuntime:
    """The runtime ``Tasks(app)`` or ``create_app`` stored on a Flask app."""
    try:
        return app.extensions["core"]  # type: ignore[no-any-return]
    except KeyError:
        raise ConfigurationError(f"{app!r} has no task runtime: call Tasks(app) or tasks.init_app(app)") from None
