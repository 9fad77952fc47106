"""Task hooks through the in-process queue and the real handler: order, failure isolation, scope."""
from __future__ import annotations

import logging

import pytest

from core import db
from core.tasks import PermanentTaskFailure, callDeferred
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.hooks import TaskHook, check_hooks

EVENTS: list[tuple] = []
RUNS: list[str] = []


class Recorder(TaskHook):
    """Records every call it gets as ``(label, method, target's last name, detail)``."""

    def __init__(self, label: str) -> None:
        self.label = label

    def _note(self, method: str, task, detail=None) -> None:
        EVENTS.append((self.label, method, (task.target or "?").rsplit(".", 1)[-1], detail))

    def before_enqueue(self, task):
        self._note("before_enqueue", task, (task.args, task.tags, task.description))

    def before_run(self, task):
        task.scratch[self.label] = "seen before"
        self._note("before_run", task, task.attempt)

    def after_run(self, task, outcome):
        self._note("after_run", task, (outcome.status, task.scratch.get(self.label)))

    def on_failure(self, task, error):
        self._note("on_failure", task, type(error).__name__)

    def on_dead_letter(self, task, outcome):
        self._note("on_dead_letter", task, outcome.dead_letter is not None)


class Raising:
    """A duck-typed hook (no base class) whose chosen method raises."""

    def __init__(self, method: str) -> None:
        self.method = method
        for name in ("before_enqueue", "before_run", "after_run", "on_failure", "on_dead_letter"):
            setattr(self, name, self._raise if name == method else self._quiet)

    def _raise(self, *args):
        raise RuntimeError(f"hook broken in {self.method}")

    def _quiet(self, *args):
        pass


OWN = Recorder("own")


@callDeferred(hooks=[OWN], tags=("billing", "monthly"), description="Recompute an invoice")
def hooked(value: int) -> None:
    RUNS.append(f"hooked {value}")


@callDeferred
def plain() -> None:
    RUNS.append("plain")


@callDeferred(hooks=[OWN])
def hooked_fails() -> None:
    RUNS.append("hooked_fails")
    raise RuntimeError("transient")


@callDeferred(hooks=[OWN])
def hooked_permanent() -> None:
    RUNS.append("hooked_permanent")
    raise PermanentTaskFailure("never")


@pytest.fixture(autouse=True)
def _clear():
    EVENTS.clear()
    RUNS.clear()


@pytest.fixture
def app(make_app):
    return make_app(hooks=[Recorder("app1"), Recorder("app2")])


def test_hooks_run_in_layers_app_wide_outside_and_the_tasks_own_inside(app, task_queue):
    hooked(7)
    plain()
    assert [e[:3] for e in EVENTS] == [("app1", "before_enqueue", "hooked"), ("app2", "before_enqueue", "hooked"),
                                       ("own", "before_enqueue", "hooked"),
                                       ("app1", "before_enqueue", "plain"), ("app2", "before_enqueue", "plain")]
    assert EVENTS[2][3] == ((7,), ("billing", "monthly"), "Recompute an invoice")
    EVENTS.clear()
    task_queue.run_pending()
    assert RUNS == ["hooked 7", "plain"]
    assert EVENTS == [
        ("app1", "before_run", "hooked", 1), ("app2", "before_run", "hooked", 1), ("own", "before_run", "hooked", 1),
        ("own", "after_run", "hooked", (200, "seen before")), ("app2", "after_run", "hooked", (200, "seen before")),
        ("app1", "after_run", "hooked", (200, "seen before")),
        ("app1", "before_run", "plain", 1), ("app2", "before_run", "plain", 1),
        ("app2", "after_run", "plain", (200, "seen before")), ("app1", "after_run", "plain", (200, "seen before")),
    ]


def test_a_failure_calls_on_failure_then_after_run_and_the_retry_counts_the_attempt(app, task_queue):
    hooked_fails()
    EVENTS.clear()
    task_queue.run_pending(raise_errors=False, max_attempts=2)
    assert RUNS == ["hooked_fails", "hooked_fails"]
    assert [e for e in EVENTS if e[0] == "own"] == [
        ("own", "before_run", "hooked_fails", 1), ("own", "on_failure", "hooked_fails", "RuntimeError"),
        ("own", "after_run", "hooked_fails", (500, "seen before")),
        ("own", "before_run", "hooked_fails", 2), ("own", "on_failure", "hooked_fails", "RuntimeError"),
        ("own", "after_run", "hooked_fails", (500, "seen before")),
    ]
    assert [e[:2] for e in EVENTS if e[0] != "own"][:3] == [("app1", "before_run"), ("app2", "before_run"),
                                                            ("app2", "on_failure")]


def test_a_dead_letter_calls_on_dead_letter_after_on_failure(app, task_queue, datastore):
    hooked_permanent()
    EVENTS.clear()
    task_queue.run_pending(raise_errors=False)
    assert [e[1:] for e in EVENTS if e[0] == "own"] == [
        ("before_run", "hooked_permanent", 1), ("on_failure", "hooked_permanent", "PermanentTaskFailure"),
        ("on_dead_letter", "hooked_permanent", True), ("after_run", "hooked_permanent", (200, "seen before"))]
    assert [e[1] for e in EVENTS if e[0] == "app1"] == ["before_run", "on_failure", "on_dead_letter", "after_run"]


def test_an_undecodable_task_reaches_the_apps_outcome_hooks(app, client, settings):
    body = b"{not json"
    headers = {SIGNATURE_HEADER: sign_request(settings.tasks_secret, "POST", "/_tasks/deferred", body),
               "X-AppEngine-QueueName": "default", "Content-Type": "application/json"}
    response = client.post("/_tasks/deferred", data=body, headers=headers)
    assert response.status_code == 200
    assert [e[:2] for e in EVENTS] == [("app2", "on_failure"), ("app1", "on_failure"), ("app2", "on_dead_letter"),
                                       ("app1", "on_dead_letter"), ("app2", "after_run"), ("app1", "after_run")]
    assert EVENTS[0][2:] == ("?", "PayloadError")
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 1


def test_a_refused_request_runs_no_hook(app, client):
    response = client.post("/_tasks/deferred", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 403
    assert EVENTS == []


@pytest.mark.parametrize("method", ["before_enqueue", "before_run", "on_failure", "on_dead_letter", "after_run"])
def test_a_raising_hook_never_costs_the_task_or_changes_its_outcome(make_app, method, caplog):
    app = make_app(hooks=[Raising(method), Recorder("after")])
    from tests.conftest import TaskQueue

    queue = TaskQueue(app)
    with caplog.at_level(logging.ERROR, logger="core.tasks.hooks"):
        hooked(1)
        hooked_fails()
        hooked_permanent()
        outcomes = queue.run_pending(raise_errors=False, max_attempts=1)
    assert RUNS == ["hooked 1", "hooked_fails", "hooked_permanent"]
    assert [o.status for o in outcomes] == [200, 500, 200]
    assert [o.dead_letter is not None for o in outcomes] == [False, False, True]
    # the hooks after the broken one still ran, in every position
    assert sum(1 for e in EVENTS if e[:2] == ("after", method)) >= 1
    assert sum(1 for e in EVENTS if e[:2] == ("own", "after_run")) == 3
    assert any(f"failed in {method}" in r.getMessage() for r in caplog.records)


def test_add_hook_on_the_runtime_and_bad_hooks_fail_at_decoration(app, task_queue):
    runtime = app.extensions["core"]
    late = runtime.add_hook(Recorder("late"))
    assert runtime.hooks[-1] is late
    plain()
    assert [e[0] for e in EVENTS] == ["app1", "app2", "late"]
    with pytest.raises(TypeError, match="has none of the hook methods"):
        runtime.add_hook(object())
    with pytest.raises(TypeError, match="hooks must be a list"):
        check_hooks("not a list", "@callDeferred on x")
    with pytest.raises(TypeError, match="42 has none of the hook methods"):
        check_hooks([42], "@callDeferred on x")


class TagsOnly(Recorder):
    """Concerns only tasks whose payload carries tags."""

    payload_field = "tags"


def test_a_hook_naming_a_payload_field_is_called_only_for_tasks_that_carry_it(make_app):
    from tests.conftest import TaskQueue

    queue = TaskQueue(make_app(hooks=[TagsOnly("tags")]))
    hooked(3)
    plain()
    queue.run_pending()
    assert RUNS == ["hooked 3", "plain"]
    assert [e[:3] for e in EVENTS if e[0] == "tags"] == [
        ("tags", "before_enqueue", "hooked"), ("tags", "before_run", "hooked"), ("tags", "after_run", "hooked")]
