"""The Flask extension on plain Flask apps: routes, app-bound runtimes, two apps in one process."""
from __future__ import annotations

import pytest
from flask import Flask

from core import db
from core.config import Settings
from core.tasks import Tasks, callDeferred
from core.tasks.errors import ConfigurationError
from core.tasks.runtime import get_runtime, runtime_of
from core.testing import TaskQueue

NOTE_KIND = "extension_note"


@callDeferred
def note(label: str) -> None:
    """Writes where it ran: the label and the secret of the runtime that executes it."""
    entity = db.Entity(db.key(NOTE_KIND, label))
    entity.update({"label": label, "secret": get_runtime().settings.tasks_secret})
    db.put(entity)


def plain_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    Tasks(app, settings=settings, startup_tasks=False)

    @app.post("/go/<label>")
    def go(label: str) -> str:
        note(label)
        return "queued"

    return app


@pytest.fixture
def two_apps(datastore_emulator, tmp_path):
    datastore_emulator.reset()

    def settings(name: str) -> Settings:
        return Settings(project=f"project-{name}", datastore_emulator_host=datastore_emulator.host,
                        tasks_backend="inline", tasks_secret=f"task-secret-{name}", secret_key=f"key-{name}",
                        tasks_default_queue=f"queue-{name}", local_data_dir=tmp_path / name)

    return plain_app(settings("a")), plain_app(settings("b"))


def notes_of(app: Flask) -> list[tuple[str, str]]:
    with app.app_context():
        return sorted((e["label"], e["secret"]) for e in db.Query(NOTE_KIND).run())


def test_a_plain_flask_app_gets_the_task_routes_and_the_dashboard(two_apps):
    app, _ = two_apps
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/_tasks/deferred", "/_tasks/queryIter", "/_tasks/cron/<path:rest>", "/_tasks/admin"} <= rules
    assert "tasks" in app.cli.commands


def test_two_apps_sign_queue_and_run_with_their_own_settings(two_apps):
    app_a, app_b = two_apps
    queue_a, queue_b = TaskQueue(app_a), TaskQueue(app_b)
    assert app_a.test_client().post("/go/from-a").status_code == 200
    assert app_b.test_client().post("/go/from-b").status_code == 200

    (task_a,), (task_b,) = queue_a.pending, queue_b.pending
    assert (task_a.request.queue, task_b.request.queue) == ("queue-a", "queue-b")
    # Each app signs with its own secret: the other app refuses the task and runs nothing.
    refused = app_b.test_client().post(task_a.request.path, data=task_a.request.body,
                                       headers=queue_a.transport._headers(task_a))
    assert refused.status_code == 403

    queue_a.run_pending()
    queue_b.run_pending()
    # Each ran in its own app (its secret) and wrote to its own project's Datastore.
    assert notes_of(app_a) == [("from-a", "task-secret-a")]
    assert notes_of(app_b) == [("from-b", "task-secret-b")]


def test_the_current_app_context_decides_which_runtime_a_call_uses(two_apps):
    app_a, app_b = two_apps
    with app_a.app_context():
        assert get_runtime() is runtime_of(app_a)
        with app_b.app_context():
            note("inner")  # outside any request: the app context is enough
            assert get_runtime() is runtime_of(app_b)
        note("outer")
        assert get_runtime() is runtime_of(app_a)
    assert [t.request.queue for t in TaskQueue(app_a).pending] == ["queue-a"]
    assert [t.request.queue for t in TaskQueue(app_b).pending] == ["queue-b"]


def test_deferring_outside_any_app_context_says_what_to_do(two_apps):
    with pytest.raises(ConfigurationError, match="app_context"):
        note("nowhere")


def test_an_app_gets_the_task_module_once(two_apps):
    app, _ = two_apps
    with pytest.raises(RuntimeError, match="already has the task module"):
        Tasks(app)


def test_init_app_serves_an_app_factory(datastore_emulator, tmp_path):
    tasks = Tasks(startup_tasks=False)
    settings = Settings(project="factory", datastore_emulator_host=datastore_emulator.host, tasks_backend="inline",
                        tasks_secret="s", secret_key="k", local_data_dir=tmp_path)
    first, second = Flask("first"), Flask("second")
    tasks.init_app(first, settings=settings)
    tasks.init_app(second, settings=settings.replace(tasks_default_queue="other"))
    assert runtime_of(first) is not runtime_of(second)
    assert runtime_of(second).settings.tasks_default_queue == "other"
    assert first.extensions["core"].app_state.extension is second.extensions["core"].app_state.extension is tasks
