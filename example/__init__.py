"""The example application served by ``main.py``: one module tree, one user provider."""
from __future__ import annotations

from example import admin_tasks  # noqa: F401 - registers the example's callable tasks
from example.invoices import Invoices
from example.periodic import Maintenance
from example.reindex import Reindex
from example.tour import Index, Tour
from example.users import SessionUsers, UserModule

MODULES = {
    "index": Index,
    "invoices": Invoices,
    "user": UserModule,
    "maintenance": Maintenance,
    "reindex": Reindex,
    "tour": Tour,
}

__all__ = ["MODULES", "SessionUsers"]
