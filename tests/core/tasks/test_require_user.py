"""``require_user``: a task whose user was deleted before it ran is a dead letter naming the user, never a run."""
from __future__ import annotations

import contextlib
from typing import Any

import pytest

from core import current, db
from core.tasks import DeferredArgumentError, TaskHandle, callDeferred
from core.tasks.executor import DEAD_LETTER_KIND

RAN: list[Any] = []


class Users:
    def __init__(self) -> None:
        self.people = {"ada": {"id": "ada"}, "bob": {"id": "bob"}}

    def load_from_request(self, request: Any) -> Any:
        return None

    def load_by_id(self, user_id: str) -> Any:
        return self.people.get(user_id)

    def id_of(self, user: Any) -> str:
        return user["id"]

    def is_admin(self, user: Any) -> bool:
        return False


@callDeferred(require_user=True)
def close_account(account: str) -> None:
    RAN.append((account, current.user.get()))


@callDeferred(require_user=True, track=True)
def close_account_tracked(account: str) -> None:
    RAN.append((account, current.user.get()))


@callDeferred
def send_receipt(order: str) -> None:
    RAN.append((order, current.user.get()))


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def app(make_app, users):
    return make_app({}, users=users)


@contextlib.contextmanager
def signed_in(users: Users, name: str):
    token = current.user.set(users.people[name])
    try:
        yield
    finally:
        current.user.reset(token)


def letters() -> list[db.Entity]:
    return db.Query(DEAD_LETTER_KIND).run()


def test_a_task_whose_user_was_deleted_is_a_dead_letter_naming_the_user_and_never_runs(app, users, task_queue):
    with signed_in(users, "ada"):
        close_account("acc-1")
    del users.people["ada"]
    task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert RAN == []
    (letter,) = letters()
    assert "'ada'" in letter["error"] and "no longer exists" in letter["error"] and "require_user" in letter["error"]
    assert letter["attempts"] == 1  # never retried


def test_a_task_whose_user_exists_runs_as_that_user(app, users, task_queue):
    with signed_in(users, "bob"):
        close_account("acc-2")
    task_queue.run_pending()
    assert RAN == [("acc-2", {"id": "bob"})] and letters() == []


def test_without_the_choice_a_deleted_users_task_runs_without_a_user(app, users, task_queue):
    with signed_in(users, "ada"):
        send_receipt("o-1")
    del users.people["ada"]
    task_queue.run_pending()
    assert RAN == [("o-1", None)]


def test_the_choice_per_call(app, users, task_queue):
    with signed_in(users, "ada"):
        send_receipt("o-2", _require_user=True)
        close_account("acc-3", _require_user=False)
    del users.people["ada"]
    task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert RAN == [("acc-3", None)]
    (letter,) = letters()
    assert letter["target"].endswith("send_receipt") and "'ada'" in letter["error"]


def test_a_task_that_requires_a_user_cannot_be_deferred_without_one(app, task_queue):
    with pytest.raises(DeferredArgumentError, match="close_account: it requires the user who defers it"):
        close_account("acc-4")
    assert task_queue.pending == []


def test_a_tracked_task_whose_user_was_deleted_ends_failed(app, users, task_queue):
    with signed_in(users, "ada"):
        handle = close_account_tracked("acc-5")
    del users.people["ada"]
    task_queue.run_pending(max_attempts=5, raise_errors=False)
    status = TaskHandle.fetch(handle.id).status()
    assert RAN == [] and status.state == "failed" and "no longer exists" in (status.error or "")
