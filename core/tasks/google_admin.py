"""Calls to Google's admin APIs (queues, scheduler jobs): a refusal becomes a ``ConfigurationError``.

An adapter like the two that use it (``transports/cloudtasks.py``, ``cloudscheduler.py``): the
error names the step the API refused, and a client made for the call is closed after it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

from core.tasks.errors import ConfigurationError

#: How long an admin call may take, its retries included: a command never waits minutes on an
#: endpoint that does not answer.
ADMIN_WAIT_SECONDS = 10.0


def bounded(seconds: float = ADMIN_WAIT_SECONDS) -> dict[str, Any]:
    """Keyword arguments of an admin call: retry transient errors, all within ``seconds``."""
    return {"retry": api_retry.Retry(initial=0.2, maximum=2.0, multiplier=2.0, timeout=seconds,
                                     predicate=api_retry.if_transient_error),
            "timeout": seconds}


#: What every admin call of the commands gets.
BOUNDED = bounded()


class Step:
    """What the calls are doing now (``step.now = "syncing queue q"``), for the error."""

    def __init__(self, now: str) -> None:
        self.now = now


@contextlib.contextmanager
def admin_calls(service: str, api: Any, first_step: str, *, close: bool) -> Iterator[Step]:
    """Run API calls; ``GoogleAPICallError`` becomes "``service`` refused ``step``: ...".

    With ``close`` the client's transport is closed at the end (a client made for these calls).
    """
    step = Step(first_step)
    try:
        yield step
    except api_exceptions.GoogleAPICallError as error:
        raise ConfigurationError(f"{service} refused {step.now}: {error}") from error
    except api_exceptions.RetryError as error:  # transient errors until the bounded wait ran out
        raise ConfigurationError(f"{service} did not answer {step.now}: {error.cause or error}") from error
    finally:
        if close:
            api.transport.close()
