"""Each app's registry: built from the code's declarations, following later ones, with the built-ins once."""
from __future__ import annotations

import threading

from core import db
from core.tasks import callDeferred
from core.tasks.registry import TaskRegistry, isolated_registry

#: Cron pings run through the pipeline as a kind of their own.
BUILTIN_KINDS = {"deferred", "periodic", "startup", "queryIter", "cron"}


def late_target() -> None:
    pass


def test_a_registry_made_before_a_declaration_gets_it_and_each_app_has_its_own():
    first, second = TaskRegistry.declared(), TaskRegistry.declared()
    name = f"{__name__}.late_target"
    assert name not in first.deferred
    callDeferred(late_target)  # declared after both registries were made (as a test module may)
    assert name in first.deferred and name in second.deferred
    first.deferred.remove(name)
    assert name not in first.deferred and name in second.deferred, "one app's registry is not another's"


def test_a_registry_made_by_hand_is_empty_until_it_gets_the_built_ins():
    registry = TaskRegistry()
    assert len(registry.kinds) == 0 and len(registry.periodic) == 0
    assert registry.install_builtins() is registry
    assert set(registry.kinds) == BUILTIN_KINDS
    assert {"core.tasks.periodic.sweep_outbox_task", "core.tasks.periodic.purge_task_records_task"} \
        <= set(registry.periodic)
    assert "core.tasks.callable.run_callable_task" in registry.deferred
    registry.install_builtins()  # once: a second call adds nothing and refuses nothing
    assert set(registry.kinds) == BUILTIN_KINDS


def test_declarations_in_an_isolated_block_reach_only_its_registry():
    app_registry = TaskRegistry.declared()

    def isolated_target() -> None:
        pass

    isolated_target.__qualname__ = "isolated_target"
    with isolated_registry() as registry:
        callDeferred(isolated_target)
    assert f"{__name__}.isolated_target" in registry.deferred
    assert f"{__name__}.isolated_target" not in app_registry.deferred
    assert f"{__name__}.isolated_target" not in TaskRegistry.declared().deferred


def test_an_app_runtime_has_the_built_in_kinds(app):
    from core.app import runtime_of

    assert BUILTIN_KINDS <= set(runtime_of(app).registry.kinds)


def test_no_datastore_outside_an_app_context():
    errors: list[BaseException] = []

    def outside() -> None:  # a new thread starts with no store bound, and there is no process default
        try:
            db.get_datastore()
        except db.NoDatastore as exc:
            errors.append(exc)

    thread = threading.Thread(target=outside)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and "app context" in str(errors[0])
