"""Hashed task names come from one builder and stay exactly what earlier versions wrote.

A queue refuses a second task of the same name, so during a deploy two versions must name the same
run alike: these are the names the builders gave before they shared one helper.
"""
from __future__ import annotations

import datetime
from types import SimpleNamespace

from core.tasks import lifecycle, outbox, startup
from core.tasks.periodic import kind as periodic
from core.tasks.queryiter import runs as queryiter
from core.tasks.transports.base import TASK_NAME_RE, hashed_task_name


def test_every_builder_keeps_its_names() -> None:
    slot = datetime.datetime(2026, 3, 29, 1, 30, tzinfo=datetime.UTC)
    names = [
        outbox._task_name("abc", 3),
        lifecycle._attempt_name("x" * 600, 2),
        lifecycle._attempt_name("short", 2),
        queryiter.step_task_name("run1", 2, 7),
        startup.startup_task_name("v1", "mod.fn"),
        periodic.run_task_name(SimpleNamespace(state_id="mod.fn@default"), slot, 4),
    ]
    assert names == [
        "ob-0ffad30e053a638aa0db9a80224c76381c7bdd28",
        "c172a80a51e3607cc1151eea6b132b4d20c5faa9-a2",
        "short-a2",
        "3e06f81bf2c1361eda660b995a308362-qi-2-7",
        "e1ec813b8fcc53e69dde8d1868912ee0-startup",
        "103fceec7516bf3ef53a8a13ef2aa078-periodic",
    ]
    assert all(TASK_NAME_RE.match(name) for name in names)


def test_the_builder_hashes_first() -> None:
    assert hashed_task_name("m", "-s") == hashed_task_name("m") + "-s"
    assert hashed_task_name("m") != hashed_task_name("n")
    assert len(hashed_task_name("m", digits=40)) == 40
    assert hashed_task_name("m", prefix="p-").startswith("p-")
