"""Periodic tasks, a wing of its own: declaring them, the cron kind, an operator's controls, cron files.

The rooms: :mod:`~core.tasks.periodic.schedule` (interval, ``at`` and crontab schedules, pure),
:mod:`~core.tasks.periodic.declare` (``@PeriodicTask``), :mod:`~core.tasks.periodic.kind` (the cron
ping, claims, runs, the built-ins, the overview), :mod:`~core.tasks.periodic.controls` (run now,
pause, resume), :mod:`~core.tasks.periodic.cronyaml` (``cron.yaml`` and the local cron pinger),
:mod:`~core.tasks.periodic.scheduler_plan` and :mod:`~core.tasks.periodic.cloudscheduler` (Cloud
Scheduler jobs). The names below are imported on first use, so the local stack's cron pinger loads
``cronyaml`` without the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core import lazy

_EXPORTS = {
    # Declaring periodic tasks
    "PeriodicTask": "core.tasks.periodic.declare",
    "periodic_task": "core.tasks.periodic.declare",
    "removePeriodicTask": "core.tasks.periodic.declare",
    "remove_periodic_task": "core.tasks.periodic.declare",
    "spec_of": "core.tasks.periodic.declare",
    "check_no_arguments": "core.tasks.periodic.declare",
    "PeriodicFunction": "core.tasks.periodic.declare",
    "PeriodicSpec": "core.tasks.periodic.declare",
    "CRON_NAME_RE": "core.tasks.periodic.declare",
    "DEFAULT_CRON": "core.tasks.periodic.declare",
    # The cron ping, the runs and the overview
    "RUN_TARGET": "core.tasks.periodic.kind",
    "STATE_KIND": "core.tasks.periodic.kind",
    "run_cron": "core.tasks.periodic.kind",
    "run_ping": "core.tasks.periodic.kind",
    "find_bound_task": "core.tasks.periodic.kind",
    "periodic_overview": "core.tasks.periodic.kind",
    "install_builtins": "core.tasks.periodic.kind",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from core.tasks.periodic.declare import (
        CRON_NAME_RE,
        DEFAULT_CRON,
        PeriodicFunction,
        PeriodicSpec,
        PeriodicTask,
        check_no_arguments,
        periodic_task,
        remove_periodic_task,
        removePeriodicTask,
        spec_of,
    )
    from core.tasks.periodic.kind import (
        RUN_TARGET,
        STATE_KIND,
        find_bound_task,
        install_builtins,
        periodic_overview,
        run_cron,
        run_ping,
    )
