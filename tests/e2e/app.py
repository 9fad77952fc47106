"""The WSGI app of the end-to-end failure tests: the example app plus probes that record runs.

Every probe writes a ``probe_run`` entity per execution, so a test can count runs from outside.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any

from core import create_app, db
from core.module import Module, exposed
from core.tasks import PermanentTaskFailure, TaskHandle, callDeferred, report_progress
from core.tasks.deadline import current_deadline
from core.tasks.workflows import group
from example import MODULES, SessionUsers


def _record(probe: str, token: str, **extra: Any) -> int:
    entity = db.Entity(db.key("probe_run", uuid.uuid4().hex))
    entity.update({"probe": probe, "token": token, "pid": os.getpid(), **extra})
    db.put(entity)
    return len(db.Query("probe_run").filter("token =", token).keys_only().run())


@callDeferred
def slow(token: str, seconds: float) -> None:
    time.sleep(seconds)
    _record("slow", token)


@callDeferred
def flaky(token: str, failures: int) -> None:
    runs = _record("flaky", token)
    if runs <= failures:
        raise RuntimeError(f"failing on purpose, run {runs}")


@callDeferred
def permanent(token: str) -> None:
    _record("permanent", token)
    raise PermanentTaskFailure("never works")


@callDeferred(track=True)
def redeemable(token: str, index: int) -> None:
    """Given up at once while ``probe_flag/<token>-blocked`` exists; afterwards it runs (and records)."""
    if db.get(db.key("probe_flag", f"{token}-blocked")) is not None:
        raise PermanentTaskFailure("the partner is down")
    _record("redeemable", token, index=index)


@callDeferred(track=True)
def progressing(token: str, count: int, seconds: float) -> int:
    """Reports its progress after every item (the dashboard draws it as a moving bar)."""
    for done in range(count + 1):
        report_progress(done, count, note=f"item {done}")
        time.sleep(seconds)
    _record("progressing", token)
    return count


@callDeferred(track=True)
def tracked_slow(token: str, index: int, seconds: float) -> int:
    time.sleep(seconds)
    _record("tracked_slow", token, index=index)
    return index * 2


@callDeferred(tags=("billing", "nightly"), description="Send the invoice emails")
def send_invoices(token: str) -> None:
    _record("send_invoices", token)


@callDeferred(tags=("reports",), description="Build the monthly report")
def build_report(token: str) -> None:
    _record("build_report", token)


@callDeferred(timeout=1)
def overrunning(token: str, seconds: float) -> None:
    """Works longer than its own ``timeout=``: the queue's deadline passes while it runs."""
    deadline = current_deadline()
    time.sleep(seconds)
    _record("overrunning", token, deadline=deadline)


@callDeferred
def untracked_slow(token: str, index: int, seconds: float) -> None:
    time.sleep(seconds)
    _record("untracked_slow", token, index=index)


@callDeferred(track=True, queue="limited")
def always_fails(token: str) -> None:
    _record("always_fails", token)
    raise RuntimeError("failing on purpose, always")


@callDeferred
def group_member(token: str, index: int, fail_once: bool) -> int:
    """A group's member: fails its first run when ``fail_once``; records every run (two writes, no query)."""
    if fail_once and db.get(db.key("probe_flag", f"{token}-{index}")) is None:
        db.put(db.Entity(db.key("probe_flag", f"{token}-{index}")))
        raise RuntimeError(f"member {index} fails once on purpose")
    entity = db.Entity(db.key("probe_run", uuid.uuid4().hex))
    entity.update({"probe": "group_member", "token": token, "index": index, "pid": os.getpid()})
    db.put(entity)
    return index * 2


@callDeferred
def group_report(results: list, token: str) -> int:
    _record("group_report", token, count=len(results), total=sum(results))
    return len(results)


class Probes(Module):
    @exposed(methods=("POST",))
    def mixed(self, token: str, count: str = "10", seconds: str = "0.1") -> str:
        """``count`` tracked and ``count`` untracked slow tasks, interleaved."""
        for index in range(int(count)):
            tracked_slow(token, index, float(seconds))
            untracked_slow(token, index, float(seconds))
        return "queued"

    @exposed(methods=("POST",))
    def tracked(self, token: str, seconds: str = "0", countdown: str = "0") -> dict[str, Any]:
        handle = tracked_slow(token, 21, float(seconds), _countdown=float(countdown) or None)
        return {"id": handle.id}

    @exposed(methods=("POST",))
    def tagged(self, token: str) -> dict[str, Any]:
        """Two tagged calls, tracked at the call (``_track=True``), with different tags."""
        return {"billing": send_invoices(token, _track=True).id, "reports": build_report(token, _track=True).id}

    @exposed(methods=("POST",))
    def failing(self, token: str) -> dict[str, Any]:
        return {"id": always_fails(token).id}

    @exposed(methods=("POST",))
    def cancel(self, task_id: str) -> dict[str, Any]:
        return {"cancelled": TaskHandle.fetch(task_id).cancel()}


    @exposed(methods=("POST",))
    def overrunning(self, token: str, seconds: str = "3") -> str:
        overrunning(token, float(seconds))
        return "queued"

    @exposed(methods=("POST",))
    def defer_then_cancel(self, token: str) -> dict[str, Any]:
        """Defer a call for ``token`` and cancel it in the same request; one for ``token-kept`` goes out."""
        dropped = slow(token, 0)
        slow(f"{token}-kept", 0)
        return {"cancelled": dropped.cancel()}

    @exposed(methods=("POST",))
    def slow(self, token: str, count: str = "1", seconds: str = "0.1") -> str:
        for _ in range(int(count)):
            slow(token, float(seconds))
        return "queued"

    @exposed(methods=("POST",))
    def flaky(self, token: str, failures: str = "2") -> str:
        flaky(token, int(failures))
        return "queued"

    @exposed(methods=("POST",))
    def redeemable(self, token: str, count: str = "1") -> str:
        for index in range(int(count)):
            redeemable(token, index)
        return "queued"

    @exposed(methods=("POST",))
    def progressing(self, token: str, count: str = "100", seconds: str = "0.05") -> dict[str, Any]:
        return {"id": progressing(token, int(count), float(seconds)).id}

    @exposed(methods=("POST",))
    def permanent(self, token: str) -> str:
        permanent(token)
        return "queued"

    @exposed(methods=("POST",))
    def group(self, token: str, count: str = "10", fail_every: str = "20") -> dict[str, Any]:
        """A group of ``count`` members (every ``fail_every``-th fails once) with a report callback."""
        every = int(fail_every)
        members = (group_member.s(token, i, every > 0 and i % every == 0) for i in range(int(count)))
        return {"id": group(members).then(group_report.s(token)).start().id}

    @exposed(methods=("POST",))
    def noop(self) -> str:
        return "ok"


app = create_app({**MODULES, "probes": Probes}, users=SessionUsers(), languages=("en", "de"))
