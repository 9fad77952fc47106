"""Workflows: groups of deferred calls with one callback, and chains of calls that feed each other.

::

    from core.tasks.workflows import chain, group

    handle = group(send_invoice.s(k) for k in keys).then(report.s(month)).start()
    handle.status()             # WorkflowStatus(state, done, failed, total)
    chain(fetch.s(url), parse.s(), store.s()).start().result(timeout=60)

Names are imported on first use: ``core.tasks.deferred`` imports the signature room from here,
and the rooms that launch workflows import ``core.tasks.deferred``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Signature": "core.tasks.workflows.signatures", "signature": "core.tasks.workflows.signatures",
    "group": "core.tasks.workflows.groups", "Group": "core.tasks.workflows.groups",
    "chain": "core.tasks.workflows.chains", "Chain": "core.tasks.workflows.chains",
    "GroupHandle": "core.tasks.workflows.handle", "ChainHandle": "core.tasks.workflows.handle",
    "WorkflowStatus": "core.tasks.workflows.handle", "WorkflowFailed": "core.tasks.workflows.handle",
    "WorkflowHook": "core.tasks.workflows.hook", "install": "core.tasks.workflows.hook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core.tasks.workflows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from core.tasks.workflows.chains import Chain, chain
    from core.tasks.workflows.groups import Group, group
    from core.tasks.workflows.handle import ChainHandle, GroupHandle, WorkflowFailed, WorkflowStatus
    from core.tasks.workflows.hook import WorkflowHook, install
    from core.tasks.workflows.signatures import Signature, signature
