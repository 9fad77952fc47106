"""Example module: a request handler defers work to a task that runs on the live module."""
from __future__ import annotations

import datetime
import re
from typing import Any

from flask import abort

from core import current, db
from core.module import Module, exposed
from core.tasks import PayloadError, callDeferred

#: A month as ``YYYY-MM``.
MONTH_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class Invoices(Module):
    @exposed
    def close_month(self, month: str = "2026-10") -> dict[str, Any]:
        """Returns at once; the totals are recomputed later, in a task."""
        if not MONTH_RE.fullmatch(month):  # checked here: a task that can never succeed is not queued
            abort(400, "month must look like 2026-10")
        handle = self.recompute_totals(month)
        return {"queued": handle.id, "month": month}

    @callDeferred
    def recompute_totals(self, month: str) -> None:
        """Runs in a task with the caller's user and language restored."""
        if not MONTH_RE.fullmatch(month):  # a signed call with another month can never succeed
            raise PayloadError(f"month must look like 2026-10, not {month[:40]!r}")
        user = current.user.get()
        entity = db.Entity(db.key("invoice_total", month))
        entity.update({
            "month": month,
            "computed_by": user.key.name if user is not None else None,
            "language": current.language.get(),
            "module": self.module_path,
            "at": datetime.datetime.now(datetime.UTC),
        })
        db.put(entity)


@callDeferred
def noop(*args: Any, **kwargs: Any) -> None:
    """Does nothing: used by the benchmark to measure the task machinery alone."""
