"""The task runtime: everything the task layer needs from the app, in one replaceable object.

``create_app`` builds one and activates it; tests can build their own. Nothing here imports Flask
or a Google library: the transport and the request verifier are built lazily from the settings.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from core.tasks.registry import TaskRegistry, active_registry
from core.users import AnonymousUsers, UserProvider

if TYPE_CHECKING:
    from core.config import Settings
    from core.tasks.executor import Outcome
    from core.tasks.security import RequestVerifier
    from core.tasks.transports.base import Transport

log = logging.getLogger(__name__)


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


class TaskRuntime:
    """Settings, registry, live modules, users and the queue transport of one app."""

    def __init__(self, settings: Settings, *, registry: TaskRegistry | None = None,
                 modules: InstanceLocator | None = None, users: UserProvider | None = None,
                 environment: EnvironmentHandler | None = None,
                 transport: Transport | None = None,
                 admin_mail: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else active_registry()
        self.modules = modules
        self.users: UserProvider = users or AnonymousUsers()
        self.environment = environment
        self.admin_mail = admin_mail
        #: Called with every :class:`Outcome` the executor produces (tests, metrics, admin pages).
        self.outcome_listeners: list[Callable[[Outcome], None]] = []
        self._transport = transport
        self._verifier: RequestVerifier | None = None
        self._lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = build_transport(self.settings)
        return self._transport

    @property
    def verifier(self) -> RequestVerifier:
        if self._verifier is None:
            from core.tasks.security import RequestVerifier

            self._verifier = RequestVerifier(self.settings)
        return self._verifier

    def notify(self, outcome: Outcome) -> None:
        for listener in list(self.outcome_listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("outcome listener %r failed", listener)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def build_transport(settings: Settings) -> Transport:
    """The transport the settings ask for: ``local``, ``cloudtasks`` or ``inline``."""
    backend = settings.tasks_backend
    if backend == "local":
        from core.tasks.transports.local import LocalQueueStore, LocalTransport

        return LocalTransport(LocalQueueStore(local_queue_path(settings)))
    if backend == "cloudtasks":
        from core.tasks.transports.cloudtasks import CloudTasksTransport

        return CloudTasksTransport(settings)
    if backend == "inline":
        from core.tasks.transports.inline import InlineTransport

        return InlineTransport()
    from core.tasks.errors import ConfigurationError

    raise ConfigurationError(f"unknown TASKS_BACKEND {backend!r}: use local, cloudtasks or inline")


def local_queue_path(settings: Settings) -> Any:
    return settings.local_data_dir / "queue.sqlite3"


_active: TaskRuntime | None = None


def activate(runtime: TaskRuntime) -> TaskRuntime | None:
    """Make ``runtime`` the one deferred calls use; returns the previous one."""
    global _active
    previous, _active = _active, runtime
    return previous


def get_runtime() -> TaskRuntime:
    if _active is None:
        from core.tasks.errors import ConfigurationError

        raise ConfigurationError("no task runtime: build the app with core.create_app() first")
    return _active
