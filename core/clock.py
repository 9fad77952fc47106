"""The wall clock records are stamped with: timezone-aware UTC, never naive."""
from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
