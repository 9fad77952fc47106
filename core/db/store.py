"""The Datastore of the current context: one project + namespace and a lazily built client.

An app has its own store, bound to each of its contexts by its task runtime; a script or a test
binds one itself (:func:`configure`, :func:`using`). There is no process default: a Datastore
call where none is bound raises :class:`NoDatastore`. ``core.db`` re-exports these names.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import datastore

if TYPE_CHECKING:
    from core.config import Settings


class Datastore:
    """One project + namespace and a lazily built client; an app has its own (:func:`bind`)."""

    def __init__(self, project: str, namespace: str | None = None, emulator_host: str | None = None) -> None:
        self.project = project
        self.namespace = namespace
        self.emulator_host = emulator_host
        self._client: datastore.Client | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Datastore:
        return cls(settings.project, settings.namespace, settings.datastore_emulator_host)

    @property
    def client(self) -> datastore.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self) -> datastore.Client:
        if self.emulator_host and not os.environ.get("DATASTORE_EMULATOR_HOST"):
            return datastore.Client(project=self.project, namespace=self.namespace,
                                    credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": f"http://{self.emulator_host}"})
        return datastore.Client(project=self.project, namespace=self.namespace)

    def key(self, *path: Any, namespace: str | None = None, parent: datastore.Key | None = None) -> datastore.Key:
        """A key in this store's project and namespace (or under ``parent``)."""
        if parent is not None:
            return datastore.Key(*path, parent=parent)
        return datastore.Key(*path, project=self.project,
                             namespace=namespace if namespace is not None else self.namespace)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


#: The store of the current context: the app's (bound by its task runtime), or one set by :func:`configure`.
_current: contextvars.ContextVar[Datastore | None] = contextvars.ContextVar("core_datastore", default=None)


class NoDatastore(RuntimeError):
    """A Datastore call was made where no store is bound (outside any app context)."""


def configure(settings_or_store: Settings | Datastore) -> Datastore:
    """Make a store current in this context from now on (scripts, a test's set-up); returns it.

    Not a process default: another thread, or an app context, has its own. Apps bind theirs to
    each of their contexts (:meth:`TaskRuntime.bound`).
    """
    store = settings_or_store
    if not isinstance(store, Datastore):
        store = Datastore.from_settings(store)
    _current.set(store)
    return store


def bind(store: Datastore) -> contextvars.Token[Datastore | None]:
    """Make ``store`` current in this context (an app context); undo with :func:`unbind`."""
    return _current.set(store)


def unbind(token: contextvars.Token[Datastore | None]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def using(store: Datastore) -> Iterator[Datastore]:
    """``store`` current inside the block (a thread of a script or a test: threads start without one)."""
    token = bind(store)
    try:
        yield store
    finally:
        unbind(token)


def get_datastore() -> Datastore:
    """The current context's store: the app's inside a request, task, CLI command or ``app.app_context()``."""
    current = _current.get()
    if current is None:
        raise NoDatastore("no Datastore here: use it inside an app context (a request, a task, a CLI command, "
                          "`with app.app_context():`), or give this context a store with db.configure(...)")
    return current
