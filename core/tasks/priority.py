"""Priorities, tags and descriptions of deferred functions.

``@callDeferred(priority="high")`` sends the function's tasks to the queue the priority mapping
names (setting ``TASKS_PRIORITY_QUEUES``; by default ``high`` -> ``high``, ``normal`` -> the
default queue, ``low`` -> ``low``). The queue must be in the app's queue table: a priority whose
queue is missing fails at the call, naming the priority, the queue and the file. :func:`queue_of`
names and checks the queue of any call, whichever way the queue was named.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.config import PRIORITIES
from core.tasks.errors import ConfigurationError
from core.tasks.queues import UnknownQueue
from core.tasks.runtime import TaskRuntime

MAX_TAGS = 20
MAX_TAG_CHARS = 100
MAX_DESCRIPTION_CHARS = 1500


def check_priority(priority: Any, what: str) -> str | None:
    if priority is not None and priority not in PRIORITIES:
        raise ConfigurationError(f"{what}: priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return priority  # type: ignore[no-any-return]


def check_tags(tags: Iterable[Any], description: Any, what: str) -> tuple[tuple[str, ...], str | None]:
    """``tags=`` and ``description=`` checked at decoration: short non-empty strings."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise ConfigurationError(f"{what}: tags must be a tuple of strings, got {tags!r}")
    found = tuple(tags)
    bad = [t for t in found if not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG_CHARS]
    if bad:
        raise ConfigurationError(f"{what}: each tag must be a non-empty string of at most {MAX_TAG_CHARS} "
                                 f"characters, got {bad[0]!r}")
    if len(found) > MAX_TAGS:
        raise ConfigurationError(f"{what}: at most {MAX_TAGS} tags, got {len(found)}")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS):
        raise ConfigurationError(f"{what}: description must be a string of at most {MAX_DESCRIPTION_CHARS} "
                                 f"characters, got {description!r:.80}")
    return tuple(dict.fromkeys(found)), description


def queue_of(runtime: TaskRuntime, what: str, *, option: str | None = None, declared: str | None = None,
             priority: str | None = None) -> str:
    """The queue of a call of ``what``, checked against the app's queue table.

    ``option``: ``_queue=`` at the call; ``declared``: the queue its declaration names; else its
    priority's queue, else the default one. An unknown queue raises
    :class:`~core.tasks.queues.UnknownQueue` naming ``what``, how the queue was named, and the file.
    """
    if option is not None:
        return runtime.queues.require(option, f"{what}(_queue=...)")
    if declared is not None:
        return runtime.queues.require(declared, f"{what} (declared with queue=...)")
    return queue_for(runtime, priority, what)


def queue_for(runtime: TaskRuntime, priority: str | None, what: str) -> str:
    """The queue of a task with ``priority`` (``None``: the default queue)."""
    settings = runtime.settings
    if priority is None:
        return settings.tasks_default_queue
    queue = dict(settings.tasks_priority_queues).get(priority) or settings.tasks_default_queue
    if queue not in runtime.queues:
        raise UnknownQueue(f"{what} has priority {priority!r}, which maps to queue {queue!r}, but "
                           f"{runtime.queues.described_source} defines no such queue: "
                           "add it there or change TASKS_PRIORITY_QUEUES")
    return queue
