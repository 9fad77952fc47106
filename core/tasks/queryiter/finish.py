"""The end of a query run: ``handleFinish`` once, under a claim on the run record.

A single chain claims the finish in the transaction that commits its last position (see
:mod:`.chunk`). A sharded run finishes in two steps, each its own transaction, so a crash between
them loses nothing: a shard whose range is exhausted marks its shard record done, then a
transaction over the run record and every shard record claims the finish if all shards are done
and nobody holds the claim. Whichever shard commits its ``done`` last sees all of them done; a
retried or duplicated step of a done shard goes straight to the claim. The claim is renewed while
``handleFinish`` runs; one not renewed for ``finishLease`` (its holder died) may be taken over.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from core import db
from core.clock import utc_now as now
from core.tasks import aio, lease
from core.tasks.errors import RetryTask, error_text
from core.tasks.queryiter.api import QueryIter
from core.tasks.queryiter.runs import FINISHED, RUNNING, SHARD_DONE, shard_keys

log = logging.getLogger(__name__)


class Lost(Exception):
    """The run record moved on without this execution (stopped, resumed or done by another)."""


def check_claim(record: db.Entity, lease_time: datetime.timedelta, run_id: str) -> None:
    """Raise :class:`RetryTask` while another execution holds a live finish claim."""
    since = record.get("finishing_since")
    if since is not None and now() - since < lease_time:
        raise RetryTask(f"query run {run_id} is being finished by another execution")


def claim_over_shards(run_key: db.Key, generation: int, lease_time: datetime.timedelta, token: str) -> int | None:
    """Claim the finish of a sharded run when every shard is done; returns the total, or ``None``
    while a shard still runs (that shard's end will claim it).

    The shards are looked at first outside a transaction: one that reads every shard record while
    the others still checkpoint would make their transactions abort (and wait, in production).
    A shard's ``done`` is committed before it looks, so the last one to commit sees all done.
    """
    run = db.get(run_key)
    if run is None or any(shard is None or shard["state"] != SHARD_DONE for shard in db.get(shard_keys(run))):
        return None

    def claim() -> int | None:
        run = db.get(run_key)
        if run is None or int(run["generation"]) != generation or run["status"] != RUNNING:
            raise Lost()
        found = db.get(shard_keys(run))
        shards = [shard for shard in found if shard is not None and shard["state"] == SHARD_DONE]
        if len(shards) != len(found):
            return None
        check_claim(run, lease_time, str(run_key.name))
        total = sum(int(shard["processed"]) for shard in shards)
        claimed = now()
        run.update({"processed": total, "errors": sum(int(shard["errors"]) for shard in shards),
                    "finishing_since": claimed, "finish_token": token, "updated": claimed})
        db.put(run)
        return total

    return db.run_in_transaction(claim)


def call_finish(cls: type[QueryIter], run_key: db.Key, token: str, total: int, custom: Any) -> None:
    """Run ``handleFinish`` under the claim ``token``, then mark the run finished (or release the claim)."""
    run_id = str(run_key.name)
    lease_time = cls.finishLease
    try:
        with lease.Heartbeat(_keeper(run_key, token), lease.renew_interval(lease_time),
                             what=f"handleFinish of query run {run_id}"):
            aio.call(cls.handleFinish, total, custom)
    except BaseException as exc:
        _release(run_key, token, f"handleFinish: {type(exc).__name__}: {exc}")
        raise

    def done() -> None:
        current = db.get(run_key)
        if current is None or current.get("finish_token") != token:
            return
        ended = now()
        current.update({"status": FINISHED, "finished": ended, "updated": ended, "finishing_since": None})
        db.put(current)

    db.run_in_transaction(done)
    log.info("query run %s of %s finished after %d entities", run_id, cls.iter_id, total)


def _keeper(run_key: db.Key, token: str) -> Callable[[], bool]:
    """Renews the finish claim while ``handleFinish`` runs, so no retry takes it over."""
    return lease.stamper(run_key, "finishing_since", lambda record: record.get("finish_token") == token)


def _release(run_key: db.Key, token: str, error: str) -> None:
    def release() -> None:
        record = db.get(run_key)
        if record is not None and record.get("finish_token") == token:
            record.update({"finishing_since": None, "finish_token": None, "last_error": error_text(error),
                           "updated": now()})
            db.put(record)

    db.run_in_transaction(release)
