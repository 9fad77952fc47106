"""Putting a user's own Flask app on test settings for the duration of a test."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from flask import Flask

from core.config import Settings, configured
from core.extension import Tasks
from core.tasks.runtime import TaskRuntime, runtime_of

#: What a test app always takes from the test's settings, whatever its ``app.config`` says: its
#: Datastore, its queue (in process), its secrets and its local data folder.
TEST_FIELDS = frozenset({"project", "namespace", "datastore_emulator_host", "tasks_backend", "tasks_emulator_host",
                         "tasks_secret", "secret_key", "local_data_dir", "runtime"})


def with_app_config(settings: Settings, app: Flask) -> Settings:
    """``settings`` with what ``app.config`` sets itself, the test's own fields aside."""
    kept = {field: value for field, value in configured(app.config).items() if field not in TEST_FIELDS}
    return settings.replace(**kept) if kept else settings


@contextlib.contextmanager
def as_test_app(app: Flask, *, settings: Settings, startup_tasks: bool = False, **options: Any) -> Iterator[Flask]:
    """Run ``app`` on ``settings`` inside the block.

    An app without the task module gets ``Tasks`` with these settings. An app that has it (built at
    import, on the environment's settings) keeps its registry, modules and hooks, but its runtime is
    swapped for one on ``settings`` (the inline queue, the test emulator) and restored afterwards.
    Either way what the app's own ``app.config`` sets (``TASKS_QUEUE_YAML``, ``TASKS_TIMEZONE``, ...)
    is kept, except where the test must have its own (:data:`TEST_FIELDS`).
    """
    settings = with_app_config(settings, app)
    if "core" not in app.extensions:
        Tasks(app, settings=settings, startup_tasks=startup_tasks, **options)
        yield app
        return
    original = runtime_of(app)
    runtime = TaskRuntime(settings, registry=options.get("registry", original.registry), modules=original.modules,
                          users=options.get("users", original.users),
                          environment=options.get("environment", original.environment),
                          transport=options.get("transport"), admin_mail=options.get("admin_mail", original.admin_mail),
                          hooks=original.hooks)
    runtime.app_state = dataclasses.replace(original.app_state, startup_pending=startup_tasks)
    runtime.pipeline.inherit(original.pipeline)
    app.extensions["core"] = runtime
    try:
        yield app
    finally:
        app.extensions["core"] = original
        runtime.close()
