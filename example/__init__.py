"""The example application served by ``main.py``: one module tree, one user provider."""
from __future__ import annotations

from core.admin import TaskAdmin
from example import admin_tasks  # noqa: F401 - registers the example's callable tasks
from example.invoices import Index, Invoices
from example.users import SessionUsers, UserModule

MODULES = {
    "index": Index,
    "invoices": Invoices,
    "user": UserModule,
    "maintenance": __import__("example.periodic", fromlist=["Maintenance"]).Maintenance,
    "_tasks/admin": TaskAdmin,
    "reindex": __import__("example.reindex", fromlist=["Reindex"]).Reindex,
}

__all__ = ["MODULES", "SessionUsers"]
