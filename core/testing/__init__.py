"""The pytest plugin for suites of apps that use the task module (loaded through ``pytest11``).

Fixtures (each can be overridden by a fixture of the same name in a ``conftest.py``):

- ``datastore_emulator`` (session): the real Cloud Datastore emulator on a free port.
- ``settings``: settings of one test: that emulator, the in-process queue, fixed secrets.
- ``datastore``: the emulator wiped, its store current for the test's own calls.
- ``make_app(app_or_modules=None, **options)``: a test app on those settings, running on a
  :class:`TestClock`, whose runtime stays current for the rest of the test (deferred calls made by
  the test itself go to its queue and read its clock; no app context is kept pushed, so every
  test-client request still gets a fresh ``g``). Give it
  your own Flask app (its ``Tasks`` runtime is swapped for a test one while the test runs), a
  ViUR-style module mapping or nothing.
- ``app``: ``make_app(<the tasks_app ini option>)``, e.g. ``tasks_app = myapp:app``; without the
  option it refuses with a usage error naming the option (override ``app`` to test something else).
- ``client``: ``app.test_client()``.
- ``task_queue``: the app's :class:`TaskQueue`: ``run_pending()`` (a failing task raises
  :class:`core.tasks.TaskFailed`), ``advance(seconds)``, ``run_pending(until=...)``,
  ``ping_cron("default")``, ``clock`` (the app's clock: advancing it moves countdowns, backoff,
  leases, TTLs and periodic due-ness; ``TaskQueue(app, clock=TestClock(start=...))`` starts it at
  a fixed moment).
- ``make_stack(app_module=..., **options)`` / ``live_stack``: the local stack (emulator + local
  queue + gunicorn or granian) serving an app module on free ports, stopped after the test.
- ``stack_server``: the server those stacks run (``TASKS_SERVER``, else gunicorn); a test marked
  ``@on_every_server`` runs once per server.

If the emulator cannot start, every test that needs it errors: nothing is skipped.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from flask import Flask
from werkzeug.utils import import_string

from core import db
from core.app import create_app
from core.config import Settings
from core.devserver.datastore_emulator import DatastoreEmulator, start_datastore_emulator
from core.devserver.servers import SERVERS, server_from_env
from core.devserver.stack import LocalStack
from core.tasks.errors import TaskFailed
from core.tasks.runtime import runtime_of
from core.testing.apps import as_test_app
from core.testing.queue import TaskQueue, TestClock, install_test_clock

__all__ = ["TaskFailed", "TaskQueue", "TestClock", "as_test_app", "on_every_server"]

#: Runs a test on live stacks of each server the local stack supports (gunicorn, granian).
on_every_server = pytest.mark.parametrize("stack_server", SERVERS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("tasks_app", "the app the `app` fixture tests, as module:attribute (e.g. myapp:app)")
    parser.addini("tasks_stack_app", "the app module `live_stack` serves (default: tasks_app, else main:app)")


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[DatastoreEmulator]:
    """The real Cloud Datastore emulator (Java 17, google-cloud-cli's component), one per session on a free port."""
    emulator = start_datastore_emulator()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def settings(datastore_emulator: DatastoreEmulator, tmp_path: Any) -> Settings:
    """Settings for one test: the emulator, the in-process queue, fixed secrets, data under ``tmp_path``."""
    return Settings(
        project="test-project",
        datastore_emulator_host=datastore_emulator.host,
        tasks_backend="inline",
        tasks_secret="test-task-secret",
        secret_key="test-secret-key",
        local_data_dir=tmp_path / "local-data",
    )


@pytest.fixture
def datastore(datastore_emulator: DatastoreEmulator, settings: Settings) -> Iterator[db.Datastore]:
    """A wiped emulator, its store current for the test (outside app contexts: the test's own calls)."""
    datastore_emulator.reset()
    store = db.Datastore.from_settings(settings)
    token = db.bind(store)
    try:
        yield store
    finally:
        db.unbind(token)
        store.close()


@pytest.fixture
def make_app(settings: Settings, datastore: db.Datastore) -> Iterator[Callable[..., Flask]]:
    """``make_app(your_app | module mapping | None, **Tasks options)``: a test app, current until the test ends."""
    with contextlib.ExitStack() as stack:

        def build(app_or_modules: Flask | Mapping[str, Any] | None = None, **options: Any) -> Flask:
            options.setdefault("startup_tasks", False)
            options.setdefault("settings", settings)
            if isinstance(app_or_modules, Flask):
                app = stack.enter_context(as_test_app(app_or_modules, **options))
            else:
                app = create_app(app_or_modules or {}, **options)
            app.testing = True
            runtime = runtime_of(app)
            install_test_clock(runtime)  # the app runs on the test clock that task_queue advances
            stack.enter_context(runtime.bound())
            return app

        yield build


#: What the ``app`` fixture says when it does not know which app to test.
NO_APP = ("the `app` fixture (and `client`, `task_queue`) does not know which app to test: set "
          "`tasks_app = yourmodule:app` under [pytest] in pytest.ini (or [tool.pytest.ini_options] in "
          "pyproject.toml), or define your own `app` fixture in conftest.py returning `make_app(your_app)`")


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Flask:
    """Your app (the ``tasks_app`` ini option, ``module:attribute``) on test settings for this test.

    Without that option this refuses with a usage error: override the fixture to test another app.
    """
    target = request.config.getini("tasks_app")
    if not target:
        raise pytest.UsageError(NO_APP)
    make_app: Callable[..., Flask] = request.getfixturevalue("make_app")
    return make_app(import_string(target.replace(":", ".")))


@pytest.fixture
def client(app: Flask) -> Any:
    """The test client of ``app``: requests run in process, tasks they defer go to ``task_queue``."""
    return app.test_client()


@pytest.fixture
def task_queue(app: Flask) -> TaskQueue:
    """``app``'s in-process queue and test clock: ``run_pending()``, ``advance(seconds)``, ``ping_cron(group)``.

    A task that fails is raised by ``run_pending`` as :class:`core.tasks.TaskFailed`, its own error as the cause.
    """
    return TaskQueue(app)


@pytest.fixture
def stack_server() -> str:
    """The server of the test's live stacks: ``TASKS_SERVER``, else gunicorn (``@on_every_server``: each)."""
    return server_from_env()


@pytest.fixture
def make_stack(datastore_emulator: DatastoreEmulator, tmp_path: Any,
               stack_server: str) -> Iterator[Callable[..., LocalStack]]:
    """Start a live stack on free ports and throw-away data; every one started is stopped after the test.

    The test's own Datastore calls (outside an app context) then reach the stack's data.
    """
    stacks: list[LocalStack] = []
    stores: list[db.Datastore] = []
    tokens: list[Any] = []
    datastore_emulator.reset()

    def start(app_module: str | None = None, **kwargs: Any) -> LocalStack:
        if app_module is not None:
            kwargs["app_module"] = app_module
        kwargs.setdefault("server", stack_server)
        kwargs.setdefault("data_dir", tmp_path / f"stack{len(stacks)}")
        kwargs.setdefault("log_dir", tmp_path / f"stack{len(stacks)}" / "logs")
        stack = LocalStack(datastore=datastore_emulator, persist=False, cron=kwargs.pop("cron", False), **kwargs)
        stacks.append(stack)
        stack.start()
        stores.append(db.Datastore(project=stack.settings.project, emulator_host=datastore_emulator.host))
        tokens.append(db.bind(stores[-1]))
        return stack

    yield start
    for token in reversed(tokens):
        db.unbind(token)
    for store in stores:
        store.close()
    for stack in stacks:
        stack.stop()


@pytest.fixture
def live_stack(request: pytest.FixtureRequest, make_stack: Callable[..., LocalStack]) -> LocalStack:
    """The local stack serving ``tasks_stack_app`` (else ``tasks_app``, else ``main:app``), stopped after the test."""
    target = request.config.getini("tasks_stack_app") or request.config.getini("tasks_app") or "main:app"
    return make_stack(target)

