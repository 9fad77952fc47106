"""Callable tasks: registration, and runs queued, executed as their user and recorded, on the real handler."""
from __future__ import annotations

from typing import Any

import pytest

from core import current, db
from core.tasks import DeferredArgumentError, PermanentTaskFailure, records
from core.tasks.callable import (
    DONE,
    FAILED,
    QUEUED,
    RUN_KIND,
    CallableTask,
    CallableTaskBase,
    find_task,
    get_run,
    may_call,
    queue_run,
    recent_runs,
    registered_tasks,
    run_callable_task,
)
from core.tasks.errors import ConfigurationError, DuplicateTask
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.outbox import OUTBOX_KIND
from core.tasks.registry import isolated_registry
from tests.conftest import TaskQueue

CALLS: list[tuple[str, Any, Any]] = []
FAILURES: dict[str, int] = {}


class Users:
    """Users kept in a dict; a test changes a user's rights between queueing and running."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {"ann": {"name": "ann", "admin": True},
                                                  "bob": {"name": "bob", "admin": False}}

    def load_from_request(self, req: Any) -> dict[str, Any] | None:
        return None

    def load_by_id(self, user_id: str) -> dict[str, Any] | None:
        return self.users.get(user_id)

    def id_of(self, user: Any) -> str | None:
        return user["name"]

    def is_admin(self, user: Any) -> bool:
        return bool(user and user["admin"])


class Echo(CallableTaskBase):
    key = "echo"
    name = "Echo"
    descr = "Remembers its input and who ran it."

    def canCall(self) -> bool:  # noqa: N802
        return current.user.get() is not None

    def execute(self, **data: Any) -> None:
        user = current.user.get()
        CALLS.append(("echo", data, user["name"] if user else None))


class AdminOnly(CallableTaskBase):
    key = "admin_only"
    name = "Admin only"

    def execute(self) -> None:
        CALLS.append(("admin_only", None, current.user.get()["name"]))


class Flaky(CallableTaskBase):
    key = "flaky"
    name = "Flaky"
    max_attempts = 3

    def canCall(self) -> bool:  # noqa: N802
        return True

    def execute(self, token: str, failures: int) -> None:
        FAILURES[token] = FAILURES.get(token, 0) + 1
        CALLS.append(("flaky", FAILURES[token], None))
        if FAILURES[token] <= failures:
            raise RuntimeError(f"failure {FAILURES[token]}")


class Doomed(CallableTaskBase):
    key = "doomed"
    name = "Doomed"

    def canCall(self) -> bool:  # noqa: N802
        return True

    def execute(self) -> None:
        CALLS.append(("doomed", None, None))
        raise PermanentTaskFailure("cannot ever work")


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    FAILURES.clear()


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def app(make_app, users):
    with isolated_registry() as registry:
        for cls in (Echo, AdminOnly, Flaky, Doomed):
            CallableTask(cls)
    return make_app({}, registry=registry, users=users)


@pytest.fixture
def queue(app) -> TaskQueue:
    return TaskQueue(app)


@pytest.fixture
def as_user(app, users):
    """Run a block as a signed-in user (what a request would set)."""
    def use(name: str | None):
        return _UserScope(users.users.get(name) if name else None)
    return use


class _UserScope:
    def __init__(self, user: Any) -> None:
        self.user = user

    def __enter__(self) -> None:
        self.token = current.user.set(self.user)

    def __exit__(self, *exc: object) -> None:
        current.user.reset(self.token)


def runtime_of(app):
    from core.app import runtime_of as of

    return of(app)


# --- registration ------------------------------------------------------------------------------

def test_decorator_registers_by_key_and_brings_the_runner_into_the_registry():
    with isolated_registry() as registry:
        assert CallableTask(Echo) is Echo
    assert registry.callable.get("echo") is Echo
    assert run_callable_task.target.name in registry.deferred


def test_decorator_refuses_what_cannot_work():
    with isolated_registry() as registry:
        CallableTask(Echo)
        with pytest.raises(TypeError):
            CallableTask(object)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            CallableTask(type("NoKey", (CallableTaskBase,), {}))
        with pytest.raises(ConfigurationError):
            CallableTask(type("BadKey", (CallableTaskBase,), {"key": "a b/c"}))
        with pytest.raises(ConfigurationError):
            CallableTask(type("NoAttempts", (CallableTaskBase,), {"key": "x", "max_attempts": 0}))
        with pytest.raises(DuplicateTask):
            CallableTask(type("Other", (CallableTaskBase,), {"key": "echo"}))
        CallableTask(Echo)  # the same class again is a no-op
    assert registry.callable.get("echo") is Echo and len(registry.callable) == 1


def test_base_class_defaults_follow_viur(app, as_user):
    task = CallableTaskBase()
    assert task.kindName == "server-task" and task.dataSkel() is None
    with pytest.raises(NotImplementedError):
        task.execute()
    with as_user("ann"):
        assert task.canCall() is True
    with as_user("bob"):
        assert task.canCall() is False
    with as_user(None):
        assert task.canCall() is False


def test_lookup_and_permission_functions(app, as_user):
    runtime = runtime_of(app)
    assert [t.key for t in registered_tasks(runtime)] == ["admin_only", "doomed", "echo", "flaky"]
    assert isinstance(find_task(runtime, "echo"), Echo)
    assert find_task(runtime, "nope") is None and find_task(runtime, None) is None
    with as_user(None):
        assert not may_call(Flaky())  # canCall says yes, but nobody is signed in
    with as_user("bob"):
        assert may_call(Echo()) and not may_call(AdminOnly())
    with as_user("ann"):
        assert may_call(AdminOnly())


# --- runs --------------------------------------------------------------------------------------

def test_a_run_is_recorded_queued_and_executed_as_its_user(app, queue, as_user):
    with as_user("bob"):
        run = queue_run(runtime_of(app), Echo(), {"month": "2026-10", "count": 3})
    assert run["status"] == QUEUED and run["user"] == "bob" and run["attempts"] == 0
    assert run["data_summary"] == "month='2026-10', count=3"
    assert len(queue.pending) == 1 and CALLS == []
    queue.run_pending()
    assert CALLS == [("echo", {"month": "2026-10", "count": 3}, "bob")]
    done = get_run(run.key.name)
    assert done["status"] == DONE and done["attempts"] == 1 and done["error"] is None
    assert done["started"] is not None and done["finished"] >= done["started"]
    assert records.get(run["task_id"])["state"] == "succeeded"  # callable runs are tracked
    assert [r.key.name for r in recent_runs()] == [run.key.name]


def test_permission_is_checked_again_when_the_run_executes(app, queue, as_user, users):
    with as_user("ann"):
        run = queue_run(runtime_of(app), AdminOnly(), {})
    users.users["ann"]["admin"] = False  # demoted before the task runs
    queue.run_pending(raise_errors=False)
    assert CALLS == []
    failed = get_run(run.key.name)
    assert failed["status"] == FAILED and "may no longer run" in failed["error"]
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1 and "may no longer run" in letters[0]["error"]


def test_a_failing_run_is_retried_and_its_record_follows(app, queue, as_user):
    with as_user("bob"):
        run = queue_run(runtime_of(app), Flaky(), {"token": "t1", "failures": 1})
    queue.run_pending(raise_errors=False, max_attempts=1)
    first = get_run(run.key.name)
    assert first["status"] == FAILED and first["retrying"] is True and "failure 1" in first["error"]
    assert db.Query(DEAD_LETTER_KIND).run() == []

    with as_user("bob"):
        run = queue_run(runtime_of(app), Flaky(), {"token": "t2", "failures": 2})
    queue.run_pending(max_attempts=3)
    done = get_run(run.key.name)
    assert done["status"] == DONE and done["attempts"] == 3 and done["retrying"] is False and done["error"] is None


def test_a_run_is_given_up_after_max_attempts_with_a_dead_letter(app, queue, as_user):
    with as_user("bob"):
        run = queue_run(runtime_of(app), Flaky(), {"token": "t3", "failures": 99})
    queue.run_pending(raise_errors=False, max_attempts=10)
    assert [c for c in CALLS if c[0] == "flaky"] == [("flaky", 1, None), ("flaky", 2, None), ("flaky", 3, None)]
    failed = get_run(run.key.name)
    assert failed["status"] == FAILED and failed["retrying"] is False and failed["attempts"] == 3
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1 and letters[0]["attempts"] == 3 and "attempt 3 of 3" in letters[0]["error"]


def test_a_retried_dead_letter_gives_the_run_its_whole_budget_again(app, queue, as_user):
    from core.tasks import deadletters

    with as_user("bob"):
        run = queue_run(runtime_of(app), Flaky(), {"token": "t4", "failures": 99})
    queue.run_pending(raise_errors=False, max_attempts=10)
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert deadletters.retry(runtime_of(app), letter.key)
    queue.run_pending(raise_errors=False, max_attempts=10)
    assert [c[1] for c in CALLS if c[0] == "flaky"] == [1, 2, 3, 4, 5, 6], "max_attempts=3: three more runs"
    failed = get_run(run.key.name)
    assert failed["status"] == FAILED and failed["retrying"] is False and failed["attempts"] == 6
    (again,) = db.Query(DEAD_LETTER_KIND).run()
    assert "attempt 3 of 3" in again["error"]


def test_a_permanent_failure_is_not_retried(app, queue, as_user):
    with as_user("bob"):
        run = queue_run(runtime_of(app), Doomed(), {})
    queue.run_pending(raise_errors=False, max_attempts=5)
    assert CALLS == [("doomed", None, None)]
    failed = get_run(run.key.name)
    assert failed["status"] == FAILED and failed["retrying"] is False and "cannot ever work" in failed["error"]
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1


def test_a_task_removed_before_its_run_executes_fails_without_retry(app, queue, as_user):
    with as_user("bob"):
        run = queue_run(runtime_of(app), Echo(), {})
    runtime_of(app).registry.callable.remove("echo")
    queue.run_pending(raise_errors=False, max_attempts=5)
    failed = get_run(run.key.name)
    assert failed["status"] == FAILED and "no callable task" in failed["error"]
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1 and CALLS == []


def test_record_and_task_are_written_together_or_not_at_all(app, queue, as_user):
    class Boom(Exception):
        pass

    def queue_then_fail() -> None:
        queue_run(runtime_of(app), Echo(), {"n": 1})
        raise Boom

    with as_user("bob"), pytest.raises(Boom):
        db.run_in_transaction(queue_then_fail)
    assert db.Query(RUN_KIND).run() == [] and db.Query(OUTBOX_KIND).run() == [] and queue.pending == []


def test_input_that_cannot_travel_fails_at_the_call(app, queue, as_user):
    with as_user("bob"), pytest.raises(DeferredArgumentError):
        queue_run(runtime_of(app), Echo(), {"upload": object()})
    assert db.Query(RUN_KIND).run() == [] and queue.pending == []


def test_get_run_refuses_malformed_ids(app):
    assert get_run("") is None and get_run("../x") is None and get_run("0" * 32) is None


def test_a_run_whose_input_does_not_fit_execute_is_a_dead_letter_at_once(app, queue, as_user):
    with as_user("bob"):
        run_callable_task("0" * 32, "doomed", {"unexpected": 1})
    queue.run_pending(raise_errors=False, max_attempts=5)
    assert CALLS == []
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert letter["attempts"] == 1 and "PayloadError" in letter["error"]
    assert get_run("0" * 32)["status"] == FAILED
