"""How ``flask tasks`` commands fail: one actionable line on stderr and exit status 1, never a traceback.

Google's clients fail with long chains (no credentials, an endpoint that does not answer, an API
that refuses); :func:`explain` turns the common ones into what to do about them.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from core.tasks.google_admin import ADMIN_WAIT_SECONDS as API_WAIT_SECONDS

F = TypeVar("F", bound=Callable[..., Any])


def _chain(error: BaseException) -> list[BaseException]:
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def explain(error: BaseException) -> str:
    """One line saying what went wrong and, where known, what to do."""
    names = {type(link).__name__ for link in _chain(error)}
    text = _short(" ".join(str(error).split()))
    if "DefaultCredentialsError" in names:
        return ("no Google credentials found: run `gcloud auth application-default login`, set "
                "GOOGLE_APPLICATION_CREDENTIALS, or point TASKS_EMULATOR at an emulator")
    if names & {"RetryError", "ServiceUnavailable", "DeadlineExceeded"}:
        return f"{text} (waited {API_WAIT_SECONDS:g} s: check the endpoint, e.g. TASKS_EMULATOR or " \
               "TASKS_SCHEDULER_EMULATOR, and the network, then try again)"
    if names & {"PermissionDenied", "Forbidden"}:
        return f"{text} (does the account have the role the README's deploy section names?)"
    if isinstance(error, FileNotFoundError):
        return f"file not found: {error.filename or text}"
    if type(error).__name__ == "ConfigurationError" or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line_errors(command: F) -> F:
    """Run ``command``; any failure becomes one line and exit status 1 (click's own errors stay)."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of a command becomes one line
            raise click.ClickException(explain(exc)) from exc
    return wrapper  # type: ignore[return-value]
