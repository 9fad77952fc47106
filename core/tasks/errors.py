"""One error tree for the task module, and one mapping from outcome to HTTP status.

Cloud Tasks retries every non-2xx answer, so the mapping decides what is retried:

=============================  ======  ==========================================================
outcome                        status  meaning
=============================  ======  ==========================================================
success                        200     done; the queue forgets the task
:class:`PermanentTaskFailure`  200     recorded as a dead letter, never retried
:class:`PayloadError`          200     undecodable payload: dead letter, never retried
:class:`TaskNotFound`          200     unknown task name: dead letter, never retried
:class:`RetryTask` / other     500     the queue retries with its backoff
:class:`LockHeld`              409     another run holds the task's lock: the queue retries later
:class:`BadTaskRequest`        400     malformed request: runs nothing, is not a task of ours
:class:`NotAuthenticated`      401     a page needs a signed-in user
:class:`Forbidden`             403     unsigned, forged or unverifiable request: runs nothing
:class:`NotFound`              404     unknown cron group, callable task, ...
=============================  ======  ==========================================================

Requests we cannot verify are answered 4xx and never 5xx, so a forged request is not retried.
"""
from __future__ import annotations

#: Characters of error text a record keeps (task records, callable and query-iterator runs, periodic
#: and startup state alike); the traceback, where one is kept, has its own field.
MAX_ERROR_TEXT = 2_000


def error_text(error: BaseException | str) -> str:
    """``Type: message`` of an exception (a text as it is), cut to :data:`MAX_ERROR_TEXT` with ``…``."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 1] + "…"


class TaskError(Exception):
    """Base of every error the task module raises on purpose."""

    #: The HTTP status the task handler answers when this error ends a request.
    http_status: int = 500


# --- outcomes of running a task ---------------------------------------------------------------

class PermanentTaskFailure(TaskError):
    """The task failed and will never succeed: record it, do not retry."""

    http_status = 200


class PayloadError(PermanentTaskFailure):
    """The payload cannot be decoded (corrupt, wrong version, unknown reference)."""


class TaskNotFound(PermanentTaskFailure):
    """The payload names a task that is not registered in this app."""


class RetryTask(TaskError):
    """Ask the queue to run the task again later, without it counting as a crash."""

    http_status = 500


class LockHeld(RetryTask):
    """The task's lock is held by another run: nothing ran, the queue tries again later."""

    http_status = 409


# --- requests that are not (valid) tasks ------------------------------------------------------

class RequestError(TaskError):
    """A request to ``/_tasks/*`` that runs nothing."""

    http_status = 400


class BadTaskRequest(RequestError):
    """Malformed: missing body, wrong content, bad parameters."""

    http_status = 400


class NotAuthenticated(RequestError):
    """A page that needs a signed-in user was asked for anonymously."""

    http_status = 401


class Forbidden(RequestError):
    """Unsigned, forged, tampered or otherwise unverifiable; or the user may not do this."""

    http_status = 403


class NotFound(RequestError):
    """Unknown cron group, callable task or route."""

    http_status = 404


# --- programming errors, raised where the code is written or called --------------------------

class ConfigurationError(TaskError):
    """Settings or registrations that cannot work (raised at import or start-up)."""


class DuplicateTask(ConfigurationError):
    """Two task targets claim one registered name."""


class InvalidScheduleSpecification(ConfigurationError, ValueError):
    """A periodic task's schedule is contradictory or out of range."""


class UnsupportedTargetError(ConfigurationError, TypeError):
    """A task target no runner can run (a generator function, an ``async`` ``canCall``, ...)."""


class DeferredArgumentError(TaskError, TypeError):
    """An argument of a deferred call cannot travel in a task; raised at the call site.

    ``function`` and ``argument`` name the call and the argument as the caller wrote them
    (``send_mail``, ``attachment=...`` or ``args[0]``), when the error is about one argument.
    """

    def __init__(self, message: str, *, function: str | None = None, argument: str | None = None) -> None:
        super().__init__(message)
        self.function, self.argument = function, argument


class EnqueueError(TaskError):
    """A task could neither be created nor kept for retry."""


def http_status_for(error: BaseException | None) -> int:
    """The HTTP status the task handler answers for an outcome (``None`` is success)."""
    if error is None:
        return 200
    if isinstance(error, TaskError):
        return error.http_status
    return 500


# --- a task's fate, as its handle reports it --------------------------------------------------

class TaskFailed(TaskError):
    """``TaskHandle.result()`` of a task that failed: the task's error type, message and traceback."""

    def __init__(self, task_id: str, error_type: str | None, message: str | None, traceback: str | None) -> None:
        self.task_id, self.error_type, self.error_message, self.traceback = task_id, error_type, message, traceback
        super().__init__(f"task {task_id} failed: {message or error_type or 'unknown error'}")


class TaskCancelled(TaskError):
    """``TaskHandle.result()`` of a task that was cancelled before it could finish."""


class TaskExpired(TaskError):
    """``TaskHandle.result()`` of a task whose ``expires=`` moment passed before it started (it never ran)."""


class UntrackedTask(TaskError, LookupError):
    """The task has no record: it was not tracked, its record expired, or the id is unknown."""
