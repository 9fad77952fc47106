"""The app's task pipeline: its middleware by name, cron pings through it, the mounted handler's threshold,
and ``core.current`` set up the same whichever way a task comes in."""
from __future__ import annotations

import dataclasses
import logging

import pytest
from flask import Flask

from core import current
from core.extension import Tasks
from core.tasks import PeriodicTask, callDeferred
from core.tasks.auth.signing import sign_cron_ping
from core.tasks.executor import execute
from core.tasks.handler import TaskHandler
from core.tasks.hooks import TaskHook
from core.tasks.transports.inline import InlineTransport
from core.testing.queue import TaskQueue

SEEN: list[tuple] = []


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()


@callDeferred
def noted(value: int) -> None:
    SEEN.append(("ran", value))


@callDeferred
def always_fails() -> None:
    raise RuntimeError("transient")


@PeriodicTask(cronName="t-pipeline")
def pipeline_periodic() -> None:
    SEEN.append(("periodic",))


def recorder(label: str):
    """A middleware that notes what it saw of the delivery before and after the rest."""
    def step(delivery, proceed):
        SEEN.append((label, "before", delivery.envelope.kind if delivery.envelope else None))
        outcome = proceed(delivery)
        SEEN.append((label, "after", outcome.status))
        return outcome
    step.__name__ = label
    return step


def ping(client, settings, group: str):
    path = f"/_tasks/cron/{group}"
    return client.get(path, headers=sign_cron_ping(settings.tasks_secret, path))


def test_add_middleware_places_each_one_before_or_after_the_one_named(make_app):
    app = make_app()
    runtime = app.extensions["core"]
    runtime.add_middleware(recorder("innermost"))
    runtime.add_middleware(recorder("outside_verify"), before="verify")
    runtime.add_middleware(recorder("after_decode"), after="decode")
    runtime.add_middleware(recorder("before_after_decode"), before="after_decode")
    names = runtime.pipeline.names()
    assert names.index("outside_verify") == names.index("verify") - 1
    assert names.index("before_after_decode") == names.index("decode") + 1
    assert names.index("after_decode") == names.index("decode") + 2
    assert names[-2:] == ["innermost", "run"]
    with pytest.raises(ValueError, match="no middleware named 'nonesuch'"):
        runtime.add_middleware(recorder("lost"), after="nonesuch")
    noted(1)
    TaskQueue(app).run_pending()
    assert SEEN == [("outside_verify", "before", None), ("before_after_decode", "before", "deferred"),
                    ("after_decode", "before", "deferred"), ("innermost", "before", "deferred"), ("ran", 1),
                    ("innermost", "after", 200), ("after_decode", "after", 200),
                    ("before_after_decode", "after", 200), ("outside_verify", "after", 200)]


def test_the_extensions_add_middleware_reaches_every_app_and_a_raising_one_is_passed_over(settings, datastore,
                                                                                            caplog):
    tasks = Tasks(settings=settings, startup_tasks=False)
    first = Flask("first")
    tasks.init_app(first)

    def broken(delivery, proceed):
        raise RuntimeError("middleware bug")

    tasks.add_middleware(broken, after="lifecycle")
    tasks.add_middleware(recorder("seen"), before="broken")
    second = Flask("second")
    tasks.init_app(second)
    for app in (first, second):
        assert app.extensions["core"].pipeline.names()[-6:-3] == ["lifecycle", "seen", "broken"]
        with app.app_context():
            noted(2)
        with caplog.at_level(logging.ERROR, logger="core.tasks.middleware"):
            response = deliver(app, app.extensions["core"].transport.pending.pop())
        assert response.status_code == 200, "a middleware's own bug never fails the task"
        assert any("task middleware broken failed" in r.getMessage() for r in caplog.records)
    assert SEEN.count(("ran", 2)) == 2


def deliver(app: Flask, task):
    return app.test_client().post(task.request.path, data=task.request.body, headers=InlineTransport._headers(task))


class PingHook(TaskHook):
    def before_run(self, task):
        SEEN.append(("hook before_run", task.kind, task.target))

    def after_run(self, task, outcome):
        SEEN.append(("hook after_run", task.kind, outcome.status))


def test_a_cron_ping_runs_through_the_pipeline_where_middleware_hooks_and_listeners_see_it(make_app, settings):
    app = make_app(hooks=[PingHook()])
    runtime = app.extensions["core"]
    runtime.add_middleware(recorder("mw"), after="decode")
    runtime.outcome_listeners.append(lambda outcome: SEEN.append(("listener", outcome.kind, outcome.status)))
    response = ping(app.test_client(), settings, "t-pipeline")
    assert response.status_code == 200
    assert response.get_json()["tasks"] == {"tests.core.tasks.test_pipeline.pipeline_periodic": "enqueued"}
    assert SEEN == [("mw", "before", "cron"), ("hook before_run", "cron", "cron/t-pipeline"), ("mw", "after", 200),
                    ("hook after_run", "cron", 200), ("listener", "cron", 200)]


class AdaptedHook(TaskHook):
    name = "adapted"

    def before_run(self, task):
        SEEN.append(("adapted before_run", task.kind, task.attempt))

    def on_failure(self, task, error):
        SEEN.append(("adapted on_failure", task.kind, type(error).__name__))

    def after_run(self, task, outcome):
        SEEN.append(("adapted after_run", task.kind, outcome.status))


def test_a_task_hook_given_to_add_middleware_is_a_middleware_of_its_own(make_app, settings):
    app = make_app()
    runtime = app.extensions["core"]
    runtime.add_middleware(AdaptedHook(), after="decode")
    runtime.add_middleware(recorder("inside"), after="adapted")
    assert runtime.pipeline.names().index("inside") == runtime.pipeline.names().index("decode") + 2
    noted(3)
    always_fails()
    TaskQueue(app).run_pending(raise_errors=False, max_attempts=1)
    assert ping(app.test_client(), settings, "t-pipeline").status_code == 200
    assert [event for event in SEEN if event[0].startswith("adapted")] == [
        ("adapted before_run", "deferred", 1), ("adapted after_run", "deferred", 200),
        ("adapted before_run", "deferred", 1), ("adapted on_failure", "deferred", "RuntimeError"),
        ("adapted after_run", "deferred", 500),
        ("adapted before_run", "cron", 0), ("adapted after_run", "cron", 200)]


def test_a_crashing_cron_run_is_an_outcome_of_the_pipeline_not_a_bare_500(make_app, settings):
    app = make_app(settings=dataclasses.replace(settings, tasks_timezone="Nowhere/Atlantis"), hooks=[PingHook()])
    outcomes = []
    app.extensions["core"].outcome_listeners.append(outcomes.append)
    response = ping(app.test_client(), settings, "t-pipeline")
    assert response.status_code == 500 and response.mimetype == "application/json"
    assert "TASKS_TIMEZONE" in response.get_json()["error"]
    assert response.headers["X-Task-Outcome"] == "ConfigurationError"
    (outcome,) = outcomes
    assert outcome.kind == "cron" and type(outcome.error).__name__ == "ConfigurationError"
    assert SEEN[-1] == ("hook after_run", "cron", 500)


class PatientHandler(TaskHandler):
    retryCountWarningThreshold = 2  # noqa: N815 - ViUR's name


def test_the_mounted_handlers_retry_count_warning_threshold_is_the_one_read(make_app, caplog):
    app = make_app({"_tasks": PatientHandler})
    always_fails()
    with caplog.at_level(logging.ERROR, logger="core.tasks.pipeline"):
        TaskQueue(app).run_pending(raise_errors=False, max_attempts=4)
    warned = [r.getMessage() for r in caplog.records if "is on retry" in r.getMessage()]
    assert [text.rsplit(" ", 1)[-1] for text in warned] == ["2", "3"]


CURRENT: list[tuple] = []


@callDeferred
def look_at_current() -> None:
    task = current.task.get()
    CURRENT.append((current.request.get(), current.user.get(), current.language.get(),
                    task.queue if task else None, task.retry_count if task else None, current.trace.get()))


def test_core_current_is_the_same_in_a_task_whichever_entry_it_came_through(settings, datastore):
    CURRENT.clear()
    apps = {}
    for direct in (True, False):
        app = apps[direct] = Flask(f"direct-{direct}")
        Tasks(app, settings=settings, startup_tasks=False, direct_pushes=direct)
        app.config["LANGUAGES"] = ("de", "en")
        with app.test_request_context("/", headers={"Accept-Language": "en"}):
            app.preprocess_request()
            look_at_current()
            look_at_current()
            app.do_teardown_request()
    for app in apps.values():  # the WSGI direct push, then the Flask route
        assert deliver(app, app.extensions["core"].transport.pending.pop(0)).status_code == 200
    runtime = apps[True].extensions["core"]  # in-process: the executor called straight, in an app context
    with apps[True].app_context():
        task = runtime.transport.pending.pop(0)
        outcome = execute(runtime, method="POST", path=task.request.path, headers=InlineTransport._headers(task),
                          body=task.request.body)
    assert outcome.status == 200
    assert len(CURRENT) == 3
    # Each call's trace is its own (with OpenTelemetry configured, by an earlier test or the app, each
    # enqueue starts a trace of its own): every entry restores the one its task carries, or none.
    assert CURRENT[0][:5] == CURRENT[1][:5] == CURRENT[2][:5] == (None, None, "en", "default", 0)
    assert len({entry[5] is None for entry in CURRENT}) == 1
