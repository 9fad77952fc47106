"""The WSGI app of the trace end-to-end test: a deferred task that logs and records its trace."""
from __future__ import annotations

import logging

from core import create_app, current, db
from core.module import Module, exposed
from core.tasks import callDeferred

log = logging.getLogger(__name__)


@callDeferred
def traced(token: str) -> None:
    trace = current.trace.get()
    log.info("traced task %s", token)
    entity = db.Entity(db.key("trace_probe", token))
    entity.update({"trace_id": trace.trace_id if trace else None, "span_id": trace.span_id if trace else None,
                   "sampled": trace.sampled if trace else None})
    db.put(entity)


class TraceProbe(Module):
    @exposed(methods=("POST",))
    def defer(self, token: str) -> str:
        log.info("deferring %s", token)
        traced(token)
        return "queued"


app = create_app({"trace": TraceProbe})
