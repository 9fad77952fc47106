"""Work a task starts while it runs (a query iterator run, say), noted so its run can link to it.

A callable run collects what its ``execute()`` started (:func:`collecting`); whatever starts other
work calls :func:`note` with what it started. Outside a collection :func:`note` does nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

_collected: contextvars.ContextVar[list[StartedWork] | None] = contextvars.ContextVar("core_started_work",
                                                                                     default=None)


@dataclasses.dataclass(frozen=True)
class StartedWork:
    """One piece of work started by a task: its kind (``queryiter``), id and a label for people."""

    kind: str
    id: str
    label: str

    def to_text(self) -> str:
        return f"{self.kind}:{self.id}:{self.label}"

    @classmethod
    def from_text(cls, text: str) -> StartedWork | None:
        parts = str(text).split(":", 2)
        return cls(*parts) if len(parts) == 3 else None


def note(kind: str, work_id: str, label: str) -> None:
    """Tell the task that is collecting (if any) that it started ``work_id``."""
    collected = _collected.get()
    if collected is not None:
        collected.append(StartedWork(kind, work_id, label))


@contextlib.contextmanager
def collecting() -> Iterator[list[StartedWork]]:
    """Collect what is started inside the ``with`` block into the list it yields."""
    collected: list[StartedWork] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)
