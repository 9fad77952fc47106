"""Priorities, tags and descriptions of deferred functions.

``@callDeferred(priority="high")`` sends the function's tasks to the queue the priority mapping
names (setting ``TASKS_PRIORITY_QUEUES``; by default ``high`` -> ``high``, ``normal`` -> the
default queue, ``low`` -> ``low``). The queue must be defined in ``queue.yaml``: a priority whose
queue is missing fails at the call, naming the priority, the queue and the file.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.config import PRIORITIES
from core.tasks.errors import ConfigurationError
from core.tasks.queues import load_queue_config
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


@functools.lru_cache(maxsize=8)
def _defined_queues(path: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(load_queue_config(path))


def defined_queues(path: Path) -> frozenset[str]:
    """The push queues ``queue.yaml`` at ``path`` defines (re-read when the file changes)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1
    return _defined_queues(path, mtime)


def queue_for(runtime: TaskRuntime, priority: str | None, what: str) -> str:
    """The queue of a task with ``priority`` (``None``: the default queue)."""
    settings = runtime.settings
    if priority is None:
        return settings.tasks_default_queue
    queue = dict(settings.tasks_priority_queues).get(priority) or settings.tasks_default_queue
    if queue != settings.tasks_default_queue and queue not in defined_queues(settings.queue_yaml):
        raise ConfigurationError(f"{what} has priority {priority!r}, which maps to queue {queue!r}, but "
                                 f"{settings.queue_yaml.name} ({settings.queue_yaml}) defines no such queue: "
                                 "add it there or change TASKS_PRIORITY_QUEUES")
    return queue
