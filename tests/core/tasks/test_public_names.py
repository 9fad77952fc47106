"""The public face of ``core.tasks``: what users write, at most 40 names, each written once."""
from __future__ import annotations

import importlib

import core.tasks

#: ViUR documents ``CallDeferred`` as another spelling of ``callDeferred``; no other alias is public.
DOCUMENTED_ALIASES = {"CallDeferred": "callDeferred"}


def test_core_tasks_exports_at_most_forty_names():
    assert len(core.tasks.__all__) <= 40, sorted(core.tasks.__all__)
    assert sorted(core.tasks.__all__) == sorted(core.tasks._EXPORTS)


def test_every_public_name_resolves_from_the_module_it_names():
    for name, module in core.tasks._EXPORTS.items():
        value = getattr(core.tasks, name)
        assert value is getattr(importlib.import_module(module), name), name


def test_no_name_is_an_alias_of_another_but_viurs_documented_one():
    by_object: dict[int, list[str]] = {}
    for name in core.tasks._EXPORTS:
        by_object.setdefault(id(getattr(core.tasks, name)), []).append(name)
    aliases = {tuple(sorted(names)) for names in by_object.values() if len(names) > 1}
    assert aliases <= {tuple(sorted((alias, name))) for alias, name in DOCUMENTED_ALIASES.items()}, aliases


def test_the_viur_contract_names_stay_public():
    viur = {"callDeferred", "CallDeferred", "PeriodicTask", "StartupTask", "runStartupTasks", "removePeriodicTask",
            "CallableTask", "CallableTaskBase", "QueryIter", "MetaQueryIter", "DeleteEntitiesIter", "TaskHandler",
            "JsonKeyEncoder", "jsonDecodeObjectHook", "PermanentTaskFailure", "noRetry", "retry_n_times"}
    assert viur <= set(core.tasks.__all__), viur - set(core.tasks.__all__)
