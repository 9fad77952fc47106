"""The send path: every task that leaves the app passes one function, through the real handler and queue.

Deferred calls, periodic and startup runs, callable runs, QueryIter steps, retries the app schedules
itself, dead letters sent again and workflow members and callbacks all meet the app's
``before_enqueue`` hooks, get a record when tracked, and refuse to leave without ``TASKS_SECRET``
with one error. (The dead-letter resend is tested through :func:`core.tasks.send.resend`, the
function the admin's retry calls once the dead-letter room is merged.)
"""
from __future__ import annotations

import ast
import pathlib

import pytest

import core
from core import db
from core.tasks import (
    CallableTask,
    CallableTaskBase,
    Constant,
    PeriodicTask,
    PermanentTaskFailure,
    QueryIter,
    StartupTask,
    callDeferred,
    message,
    records,
    runStartupTasks,
)
from core.tasks.callable import queue_run
from core.tasks.deferred import send_task
from core.tasks.errors import ConfigurationError
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.hooks import TaskHook
from core.tasks.registry import isolated_registry
from core.tasks.runtime import runtime_of
from core.tasks.send import resend
from core.tasks.workflows import group
from core.testing import TaskQueue

SEEN: list = []
FAILED_ONCE: set[str] = set()


class Seen(TaskHook):
    """Keeps every task the app sends, as its hooks see it."""

    def before_enqueue(self, task):
        SEEN.append(task)


with isolated_registry() as REGISTRY:
    @callDeferred
    def plain() -> None:
        pass

    @callDeferred(track=True, max_attempts=3, backoff=Constant(60))
    def flaky_once(token: str) -> None:
        if token not in FAILED_ONCE:
            FAILED_ONCE.add(token)
            raise RuntimeError("fails the first time")

    @callDeferred
    def doomed() -> None:
        raise PermanentTaskFailure("never works")

    @callDeferred
    def member(n: int) -> int:
        return n

    @callDeferred
    def callback(results: list) -> None:
        pass

    @PeriodicTask(cronName="t-send")
    def every_ping() -> None:
        pass

    @StartupTask
    def at_startup() -> None:
        pass

    class Walker(QueryIter):
        maxEntriesPerChunk = 1

    class Echo(CallableTaskBase):
        key = "send-echo"
        name = "Echo"

        def canCall(self) -> bool:  # noqa: N802
            return True

        def execute(self) -> None:
            pass

    CallableTask(Echo)


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()
    FAILED_ONCE.clear()


@pytest.fixture
def app(make_app):
    return make_app({}, registry=REGISTRY, hooks=[Seen()])


def dead_letter_of(func) -> db.Entity:
    (letter,) = [e for e in db.Query(DEAD_LETTER_KIND).run() if e["target"] == func.target.name]
    return letter


def label(task) -> tuple:
    """What a sent task is: kind, target's last name, and the step, attempt or workflow role it is."""
    payload = task.payload
    short = (task.target or "?").rsplit(".", 1)[-1]
    role = payload.get("workflow", {}).get("role") if isinstance(payload.get("workflow"), dict) else None
    return task.kind, short, payload.get("step"), payload.get("attempt"), role


def send_every_kind(app, task_queue: TaskQueue) -> None:
    """Make the app send one task of every kind (and let the queue run what they send in turn)."""
    runtime = runtime_of(app)
    plain()
    task_queue.ping_cron("t-send", run=False)
    runStartupTasks(runtime)
    queue_run(runtime, Echo(), {})
    db.put([db.Entity(db.key("sendthing", n)) for n in (1, 2)])
    Walker.startIterOnQuery(db.Query("sendthing"))
    flaky_once("a")
    doomed()
    group([member.s(1)]).then(callback.s()).start()
    task_queue.run_pending(raise_errors=False)
    letter = dead_letter_of(doomed)
    resend(runtime, bytes(letter["payload"]), queue=letter["queue"], path=letter["path"], target=letter["target"])


def recorded_when_queued(task_queue: TaskQueue) -> dict[str, bool]:
    """For every tracked task handed to the queue: whether its record existed at that moment."""
    found: dict[str, bool] = {}
    transport = task_queue.transport
    original = transport.enqueue_many

    def spy(requests):
        for request in requests:
            envelope = message.decode(request.body)
            if envelope.payload.get("track") is True:
                found[envelope.id] = found.get(envelope.id, True) and records.get(envelope.id) is not None
        return original(requests)

    transport.enqueue_many = spy
    return found


def test_a_before_enqueue_hook_sees_every_kind_of_send_and_a_tracked_one_gets_a_record(app, task_queue):
    recorded = recorded_when_queued(task_queue)
    send_every_kind(app, task_queue)
    seen = [label(task) for task in SEEN]
    for expected in [("deferred", "plain", None, None, None),
                     ("periodic", "periodic", None, None, None),
                     ("startup", "startup", None, None, None),
                     ("deferred", "run_callable_task", None, None, None),
                     ("queryIter", "Walker", 0, None, None),
                     ("queryIter", "Walker", 1, None, None),       # sent by step 0 of the run
                     ("deferred", "flaky_once", None, None, None),
                     ("deferred", "flaky_once", None, 1, None),     # the retry the app scheduled itself
                     ("deferred", "member", None, None, "member"),
                     ("deferred", "callback", None, None, "callback")]:
        assert expected in seen, f"{expected} was sent without the hook seeing it"
    assert seen.count(("deferred", "doomed", None, None, None)) == 2, "the dead letter's resend was not seen"
    tracked = [task for task in SEEN if task.payload.get("track") is True]
    assert {label(task)[1] for task in tracked} >= {"periodic", "run_callable_task", "flaky_once", "member",
                                                    "callback"}
    for task in tracked:
        assert recorded[task.id], f"{label(task)} is tracked but was queued before its record was written"


def _without_secret(app) -> None:
    runtime = runtime_of(app)
    runtime.settings = runtime.settings.replace(tasks_secret="")


def _dead_letter(app, task_queue: TaskQueue):
    doomed()
    task_queue.run_pending(raise_errors=False)
    return dead_letter_of(doomed)


SENDS = {
    "deferred": lambda app: plain(),
    "periodic": lambda app: send_task(runtime_of(app), "periodic", {}, target="periodic"),
    # runStartupTasks logs what it could not queue and lets the app start: its runs' own send is checked.
    "startup": lambda app: send_task(runtime_of(app), "startup", {}, target="startup"),
    "callable": lambda app: queue_run(runtime_of(app), Echo(), {}),
    "queryiter": lambda app: Walker.startIterOnQuery(db.Query("sendthing")),
    "workflow": lambda app: group([member.s(1)]).then(callback.s()).start(),
}


@pytest.mark.parametrize("kind", [*SENDS, "dead letter resend"])
def test_a_missing_secret_fails_every_send_with_one_clear_error(app, task_queue, kind):
    letter = _dead_letter(app, task_queue) if kind == "dead letter resend" else None
    _without_secret(app)
    with pytest.raises(ConfigurationError, match="^TASKS_SECRET is not set: tasks could not be verified$"):
        if letter is None:
            SENDS[kind](app)
        else:
            resend(runtime_of(app), bytes(letter["payload"]), queue=letter["queue"], path=letter["path"])
    assert task_queue.pending == []


CORE = pathlib.Path(core.__file__).parent
#: The admin's dead-letter retry still signs its own request until the dead-letter room (merged
#: from another branch) calls :func:`core.tasks.send.resend`; then this entry goes.
NOT_YET_ROUTED: set[str] = set()


def _sources():
    for path in sorted(CORE.rglob("*.py")):
        yield path.relative_to(CORE).as_posix(), path.read_text(encoding="utf-8")


def test_only_the_send_path_signs_and_dispatches_tasks_and_checks_the_secret():
    """A second way out would skip hooks, records and spans: nothing else signs or hands a request to a queue."""
    outside = set()
    for name, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == "core.tasks.wire":
                outside.add(name)
            elif isinstance(node, ast.ImportFrom) and node.module == "core.tasks":
                if any(alias.name == "wire" for alias in node.names):
                    outside.add(name)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "outbox"
                  and node.func.attr in ("send", "flush")):
                outside.add(name)
    assert outside - {"tasks/send.py"} - NOT_YET_ROUTED == set()
    guards = {name: source.count("TASKS_SECRET is not set") for name, source in _sources()}
    assert {name: count for name, count in guards.items() if count} == {"tasks/send.py": 1}
