"""The caller's environment, captured when a task is made and restored while it runs.

What travels in an envelope's ``env``: the caller's user id (the user is reloaded by id in the
task, never carried whole), language, trace context and the app's custom environment (a
``serialize``/``restore`` handler, ViUR's ``customEnvironmentHandler``).

A task that requires its user (``@callDeferred(require_user=True)`` or ``_require_user=True``)
carries ``require_user`` in its env: deferred without a user it fails at the call; run after its
user is gone, it is a dead letter naming the user, never a retry and never a run without a user.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core import current
from core.tasks.errors import DeferredArgumentError, PermanentTaskFailure

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


#: The key in ``env`` of a task that runs only while the user who deferred it exists.
REQUIRE_USER = "require_user"


def require_caller(env: dict[str, Any], target: str) -> None:
    """Mark ``env`` as requiring its user; a call without a signed-in user cannot be one."""
    if env.get("user") is None:
        raise DeferredArgumentError(f"cannot defer {target}: it requires the user who defers it "
                                    f"(require_user=True) and no user is signed in", function=target)
    env[REQUIRE_USER] = True


def check_required_user(env: Mapping[str, Any], user: Any) -> None:
    """Fail closed: a task that requires its user never runs without it (a dead letter, not a retry)."""
    if user is None and env.get(REQUIRE_USER):
        raise PermanentTaskFailure(f"the user {env.get('user')!r} who deferred this task no longer exists, "
                                   f"and the task requires its user (require_user=True)")


def enter_environment(runtime: TaskRuntime, env: Mapping[str, Any], info: TaskInfo | None) -> current.Entered:
    """Set the caller's user (reloaded by id), language and custom environment; undo with ``current.leave``.

    A task runs outside any Flask request (``current.request`` is ``None``) and keeps the entry's trace
    until its own is restored (:func:`core.tasks.telemetry.run_span`). A pair of calls rather than a
    context manager: every task passes here, and a generator-based one costs a few frames more.
    """
    user_id = env.get("user")
    user = runtime.users.load_by_id(user_id) if user_id is not None else None
    check_required_user(env, user)
    entered = current.enter(user=user, language=env.get("language"), task=info, trace=current.trace.get())
    try:
        if runtime.environment is not None and "custom" in env:
            runtime.environment.restore(env["custom"])
    except BaseException:
        current.leave(entered)
        raise
    return entered
