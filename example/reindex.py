"""Example query iterator: rebuild the search words of every invoice, in a chain of tasks.

``POST /reindex/start`` (admins only) starts a run and answers with its id at once;
``GET /reindex/status/<run id>`` shows its progress. Stopping and resuming runs is on the task
admin pages (``/_tasks/admin/queryiters``).
"""
from __future__ import annotations

import datetime
from typing import Any

from flask import abort

from core import current, db, key_ids
from core.module import Module, exposed
from core.tasks import QueryIter
from core.tasks.queryiter.runs import get_run
from core.tasks.runtime import get_runtime

INVOICE_KIND = "invoice"
REPORT_KIND = "reindex_report"


def search_words(invoice: db.Entity) -> list[str]:
    """Lower-case words of the invoice's customer and title, sorted and unique."""
    text = " ".join(str(invoice.get(name) or "") for name in ("customer", "title"))
    return sorted({word for word in text.lower().split() if word})


class ReindexInvoices(QueryIter):
    """Stores ``search`` on every invoice the query meets; reports once when done."""

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        words = search_words(entry)
        if entry.get("search") != words:  # unchanged invoices cost no write
            entry["search"] = words
            db.put(entry)

    @classmethod
    def handleFinish(cls, totalCount: int, customData: Any) -> None:  # noqa: N802, N803
        user = current.user.get()
        report = db.Entity(db.key(REPORT_KIND, customData["run"]))
        report.update({"total": totalCount, "year": customData.get("year"), "language": current.language.get(),
                       "by": user.key.name if user is not None else None,
                       "at": datetime.datetime.now(datetime.UTC)})
        db.put(report)


class Reindex(Module):
    """Start and watch reindex runs."""

    @exposed(methods=("POST",))
    def start(self, year: str = "") -> dict[str, Any]:
        """Reindex the invoices of ``year`` (all when empty); returns at once with the run id."""
        user = current.user.get()
        if not get_runtime().users.is_admin(user):
            abort(403)
        query = db.Query(INVOICE_KIND)
        if year:
            if not year.isdigit():
                abort(400)
            query.filter("year =", int(year))
        tag = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        run_id = ReindexInvoices.startIterOnQuery(query, customData={"run": tag, "year": year or None})
        return {"run": run_id, "report": tag}

    @exposed(methods=("GET",))
    def status(self, run_id: str) -> dict[str, Any]:
        """Progress of one run: status, entities processed and the rate so far."""
        if not get_runtime().users.is_admin(current.user.get()):
            abort(403)
        run = get_run(key_ids.key_id(run_id, what="reindex run id"))
        if run is None:
            abort(404)
        return {"run": run.id, "status": run.status, "processed": run.processed, "errors": run.errors,
                "rate": round(run.rate, 1), "last_error": run.last_error}
