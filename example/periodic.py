"""Example periodic and startup tasks: what the cron groups of ``cron.yaml`` run.

Every run is counted in an ``example_run`` entity (one per task and instance), so the admin pages
and the end-to-end tests can see what ran and how often.
"""
from __future__ import annotations

import datetime
import os

from core import db
from core.module import Module
from core.tasks.periodic.declare import PeriodicTask
from core.tasks.runtime import get_runtime
from core.tasks.startup import StartupTask

DRAFT_LIFETIME = datetime.timedelta(days=30)


def count_run(name: str) -> int:
    """Add one to the run counter of ``name``; returns the new count."""
    def increment() -> int:
        key = db.key("example_run", name)
        entity = db.get(key) or db.Entity(key)
        entity["count"] = int(entity.get("count") or 0) + 1
        entity["last"] = datetime.datetime.now(datetime.UTC)
        entity["pid"] = os.getpid()
        db.put(entity)
        return int(entity["count"])
    return db.run_in_transaction(increment)


class Maintenance(Module):
    """Housekeeping that runs on the mounted module (``/maintenance``), never on a copy of it."""

    @PeriodicTask(interval=datetime.timedelta(minutes=5))
    def refresh_statistics(self) -> None:
        """At most every 5 minutes (group ``default``): recount the invoice totals."""
        totals = db.Query("invoice_total").keys_only().run()
        stats = db.Entity(db.key("example_stats", self.module_path))
        stats.update({"invoice_totals": len(totals), "at": datetime.datetime.now(datetime.UTC)})
        db.put(stats)
        count_run(f"refresh_statistics@{self.module_path}")

    @PeriodicTask(at=datetime.time(3, 0), cronName="nightly")
    def purge_drafts(self) -> None:
        """Daily at 03:00 (group ``nightly``): delete invoice drafts older than 30 days."""
        cutoff = datetime.datetime.now(datetime.UTC) - DRAFT_LIFETIME
        old = db.Query("invoice_draft").filter("created <", cutoff).keys_only().run()
        db.delete([entity.key for entity in old])
        count_run(f"purge_drafts@{self.module_path}")


@PeriodicTask(1, cronName="minutely")
def tick() -> None:
    """Every minute (group ``minutely``): shows that the local server pings cron groups by itself."""
    count_run("tick")


@StartupTask
def record_version_start() -> None:
    """Once per deployed version: note that the version started."""
    count_run(f"startup@{get_runtime().settings.app_version}")
