"""Example callable tasks: one with a form, one without, to try ``/_tasks/list`` and the dashboard.

- *Generate demo invoices* (any signed-in user): a form asks for a month and a count.
- *Recalculate invoice taxes* (admins only): no input; starts a query iterator over every
  invoice, whose progress the dashboard shows at ``/_tasks/admin/queryiters``.
"""
from __future__ import annotations

import datetime
import time
from typing import Any

from flask_wtf import FlaskForm
from wtforms import IntegerField, StringField
from wtforms.validators import DataRequired, InputRequired, NumberRange, Regexp

from core import current, db
from core.tasks import QueryIter
from core.tasks.callable import CallableTask, CallableTaskBase

__all__ = ["GenerateInvoices", "InvoiceTaxes", "RecalculateTaxes"]

INVOICE_KIND = "invoice"


class GenerateInvoicesForm(FlaskForm):
    """The input of :class:`GenerateInvoices`; Flask-WTF validates it and checks its CSRF token."""

    month = StringField("Month", validators=[DataRequired(), Regexp(r"^\d{4}-(0[1-9]|1[0-2])$",
                                                                     message="Use the form YYYY-MM, e.g. 2026-10.")],
                        description="The month the invoices belong to (YYYY-MM).", default="2026-10")
    # InputRequired, not DataRequired: 0 is input (falsy data), and NumberRange names the range for it.
    count = IntegerField("How many", validators=[InputRequired(), NumberRange(min=1, max=500)],
                         description="Between 1 and 500.", default=20)


@CallableTask
class GenerateInvoices(CallableTaskBase):
    key = "generate_invoices"
    name = "Generate demo invoices"
    descr = "Creates demo invoices for a month, so the other tasks have something to work on."

    def canCall(self) -> bool:  # noqa: N802 - ViUR's name
        return current.user.get() is not None

    def dataSkel(self) -> type[FlaskForm]:  # noqa: N802 - ViUR's name
        return GenerateInvoicesForm

    def execute(self, month: str, count: int) -> None:  # type: ignore[override]
        user = current.user.get()
        entities = []
        for number in range(1, count + 1):
            entity = db.Entity(db.key(INVOICE_KIND, f"{month}-{number:04d}"))
            entity.update({"month": month, "year": int(month[:4]), "number": number,
                           "customer": f"Customer {number % 7 + 1}", "title": f"Demo invoice {number} of {month}",
                           "amount": number * 10, "created_by": user.key.name if user is not None else None,
                           "created": datetime.datetime.now(datetime.UTC)})
            entities.append(entity)
        db.put(entities)


class InvoiceTaxes(QueryIter):
    """Stores each invoice's tax; paced so that its progress can be watched on the dashboard."""

    #: Commit progress about every second (the default chunk is longer).
    chunkSeconds = 1.0
    #: Seconds of deliberate pause per invoice: a stand-in for a slow call such as a tax-rate service.
    pace_seconds = 0.02

    @classmethod
    def handleEntry(cls, entry: db.Entity, customData: Any) -> None:  # noqa: N802, N803
        time.sleep(cls.pace_seconds)
        rate = float(customData.get("rate", 0.19)) if isinstance(customData, dict) else 0.19
        entry["tax"] = round(float(entry.get("amount") or 0) * rate, 2)
        db.put(entry)


@CallableTask
class RecalculateTaxes(CallableTaskBase):
    key = "recalculate_taxes"
    name = "Recalculate invoice taxes"
    descr = "Recomputes the tax of every invoice in a query iterator run (admins only)."

    # canCall: the default, administrators only.

    def execute(self) -> None:  # type: ignore[override]
        InvoiceTaxes.startIterOnQuery(db.Query(INVOICE_KIND), customData={"rate": 0.19})
