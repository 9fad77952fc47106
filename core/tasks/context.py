"""The caller's environment, captured when a task is made and restored while it runs.

What travels in an envelope's ``env``: the caller's user id (the user is reloaded by id in the
task, never carried whole), language, trace context and the app's custom environment (a
``serialize``/``restore`` handler, ViUR's ``customEnvironmentHandler``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from core import current

if TYPE_CHECKING:
    from core.tasks.auth.queue_headers import TaskInfo
    from core.tasks.runtime import TaskRuntime


def capture_environment(runtime: TaskRuntime) -> dict[str, Any]:
    """The caller's user id, language and custom environment, to be restored in the task.

    The trace is added by the send path (:mod:`core.tasks.send`), which opens the enqueue span.
    """
    user = current.user.get()
    env: dict[str, Any] = {"user": runtime.users.id_of(user) if user is not None else None,
                           "language": current.language.get()}
    if runtime.environment is not None:
        env["custom"] = runtime.environment.serialize()
    return env


@contextlib.contextmanager
def restored_environment(runtime: TaskRuntime, env: Mapping[str, Any], info: TaskInfo | None) -> Iterator[None]:
    """Set the caller's user (reloaded by id), language and custom environment for the block."""
    user_id = env.get("user")
    user = runtime.users.load_by_id(user_id) if user_id is not None else None
    tokens = [(current.user, current.user.set(user)), (current.language, current.language.set(env.get("language"))),
              (current.task, current.task.set(info))]
    try:
        if runtime.environment is not None and "custom" in env:
            runtime.environment.restore(env["custom"])
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
