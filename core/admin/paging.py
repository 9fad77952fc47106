"""Cursor pagination for the admin lists: every row reachable, none cut off silently.

A page's URL carries the Datastore cursor it starts at (``cursor``) and the start cursors of the
pages after the first before it (``back``, comma-separated) and its number (``page``), so "previous" needs no
reverse query and no server-side state. Any other query parameters (filters) are kept on the
links. A cursor that is malformed or belongs to another query is a 400, never a 500.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import request

from core import db
from core.db import query as db_query
from core.tasks.errors import BadTaskRequest

T = TypeVar("T")

PAGE_SIZE = 50
#: Earlier pages remembered for "previous" links; past that, "first page" still leads back.
MAX_BACK = 40
_CURSOR_RE = re.compile(r"[A-Za-z0-9_=-]{1,1500}")


@dataclasses.dataclass
class Page:
    """One page of rows with the links around it (``None``: no such page)."""

    rows: list[Any]
    number: int
    next_url: str | None
    previous_url: str | None
    first_url: str | None

    def as_json(self) -> dict[str, Any]:
        return {"page": self.number, "next": self.next_url, "previous": self.previous_url,
                "first": self.first_url}


def _cursor_arg(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _CURSOR_RE.fullmatch(value):
        raise BadTaskRequest("malformed page cursor")
    return value


def _back_arg(value: str | None) -> list[str]:
    if not value:
        return []
    parts = value.split(",")
    if len(parts) > MAX_BACK:
        raise BadTaskRequest("too many earlier pages in the link")
    return [_required_cursor(part) for part in parts]


def _required_cursor(value: str) -> str:
    cursor = _cursor_arg(value)
    if cursor is None:
        raise BadTaskRequest("malformed page cursor")
    return cursor


def _url(path: str, params: Mapping[str, str], cursor: str | None, back: list[str], number: int) -> str:
    query = {k: v for k, v in params.items() if k not in ("cursor", "back", "page") and v != ""}
    if cursor:
        query.update({"cursor": cursor, "page": str(number)})
        if back:
            query["back"] = ",".join(back)
    encoded = urllib.parse.urlencode(query)
    return f"{path}?{encoded}" if encoded else path


def _number_arg(value: str | None, cursor: str | None, back: list[str]) -> int:
    if cursor is None:
        return 1
    if value is None:
        return len(back) + 2
    if not value.isdigit() or not 2 <= int(value) <= 10**9:
        raise BadTaskRequest("malformed page number")
    return int(value)


def paginate(query: db.Query, describe: Callable[[db.Entity], T], *, page_size: int = PAGE_SIZE,
             path: str | None = None) -> Page:
    """The page of ``query`` the request's ``cursor`` points at, rows passed through ``describe``."""
    cursor = _cursor_arg(request.args.get("cursor"))
    back = _back_arg(request.args.get("back"))
    number = _number_arg(request.args.get("page"), cursor, back)
    try:
        page = db_query.fetch_page(query, page_size, cursor)
    except ValueError:
        raise BadTaskRequest("this page link is malformed or belongs to another list; start from the "
                             "first page") from None
    path = path if path is not None else request.path
    params = dict(request.args.items())
    next_url = previous_url = first_url = None
    if page.more:
        next_back = ([*back, cursor] if cursor is not None else [])[-MAX_BACK:]
        next_url = _url(path, params, page.cursor, next_back, number + 1)
    if cursor is not None:
        first_url = _url(path, params, None, [], 1)
        if back:
            previous_url = _url(path, params, back[-1], back[:-1], number - 1)
        elif number == 2:
            previous_url = first_url
    return Page(rows=[describe(e) for e in page.entities], number=number, next_url=next_url,
                previous_url=previous_url, first_url=first_url)
