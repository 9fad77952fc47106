"""The example's HTML pages share the task pages' look: their templates extend ``base.html`` of
``core.admin`` (one header, one stylesheet, nothing fetched from the network)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response

from core.admin.forms import ActionForm
from core.admin.render import render

TEMPLATES = Path(__file__).resolve().parent / "templates"


def page(template: str, http_status: int = 200, /, **context: Any) -> Response:
    """One of the example's pages (``example/templates``), in the task pages' chrome."""
    return render(template, http_status, search_path=(TEMPLATES,), **context)


def csrf_ok() -> bool:
    """Whether this POST carries the session's CSRF token (the field ``csrf_token``)."""
    return ActionForm().validate()
