"""Chains through the in-process queue and the real handler, on the emulator."""
from __future__ import annotations

import dataclasses

import pytest

from core import db
from core.tasks import callDeferred, records
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.workflows import WorkflowFailed, chain

RUNS: list[tuple[str, object]] = []


@pytest.fixture(autouse=True)
def _reset():
    RUNS.clear()


@callDeferred
def fetch(url: str) -> dict:
    RUNS.append(("fetch", url))
    return {"url": url, "size": 3}


@callDeferred(max_attempts=2)
def parse(page: dict, *, strict: bool = False) -> list:
    RUNS.append(("parse", page))
    if strict:
        raise ValueError("cannot parse strictly")
    return [page["url"]] * page["size"]


@callDeferred
def save(items: list, bucket: str) -> str:
    RUNS.append(("save", items))
    return f"{len(items)} in {bucket}"


def _drain(task_queue) -> None:
    task_queue.run_pending(raise_errors=False, max_attempts=5)


def test_each_step_gets_the_result_before_it_and_the_chain_returns_the_last(app, task_queue):
    handle = chain(fetch.s("u"), parse.s(), save.s("b")).start()
    assert handle.status().state == "running" and handle.status().total == 3
    _drain(task_queue)
    assert RUNS == [("fetch", "u"), ("parse", {"url": "u", "size": 3}), ("save", ["u", "u", "u"])]
    assert handle.result(timeout=5) == "3 in b"
    status = handle.status()
    assert (status.state, status.done, status.failed, status.total) == ("succeeded", 3, 0, 3)
    assert len(db.Query(records.RECORD_KIND).filter("group =", handle.id).run()) == 3


def test_a_failing_middle_step_stops_the_chain_and_its_one_dead_letter_names_the_chain(app, task_queue):
    handle = chain(fetch.s("u"), parse.s(strict=True), save.s("b")).start()
    _drain(task_queue)
    assert [name for name, _ in RUNS] == ["fetch", "parse", "parse"]  # at its retry limit; save never runs
    status = handle.status()
    assert (status.state, status.done, status.failed, status.failed_step) == ("failed", 1, 1, 1)
    with pytest.raises(WorkflowFailed, match="step 1 failed"):
        handle.result(timeout=5)
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1
    letter = letters[0]
    assert letter["workflow"] == handle.id and letter["workflow_kind"] == "chain" and letter["workflow_step"] == 1
    assert f"step 1 of 3 ({parse.target.name}) of chain {handle.id}" in letter["error"]


def test_a_duplicate_push_of_a_step_sends_the_next_step_once(app, task_queue):
    handle = chain(fetch.s("u"), parse.s(), save.s("b")).start()
    first = task_queue.pending[0]
    task_queue.run_pending(max_tasks=1)
    task_queue.transport.pending.insert(0, dataclasses.replace(first, retry_count=1, execution_count=1))
    _drain(task_queue)
    assert [name for name, _ in RUNS] == ["fetch", "parse", "save"]
    assert handle.result(timeout=5) == "3 in b"
