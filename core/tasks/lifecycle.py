"""The steps of a task's life around its run: start, success, failure (the executor calls them).

- **Start.** A tracked task claims its record: a task that succeeded, failed or was cancelled is
  answered 200 without running (a duplicate push, a replay, a revoked task); one whose attempt
  is still running elsewhere is answered 409 so the queue comes back later.
- **Success.** The return value goes through ``core.json`` into the record (a value that can't
  is a permanent failure that names it).
- **Lock wait.** A run that finds its lock held is not a failure, an attempt or a dead letter,
  whatever its policy says (:func:`wait_for_lock`): while the queue's next backoff is short, the
  wait is answered 409 and the queue retries it; past that the app sends the task again with a
  jittered, capped, growing delay, so waiters spread out instead of retrying in lock-step and
  none waits longer than the cap between two looks at the lock.
- **Failure.** The task's retry policy and the queue's limits decide: retry on the queue's
  schedule (non-2xx), schedule the next attempt ourselves with the policy's backoff (2xx, same
  task id, one record), or give up: the caller writes a dead letter and answers 2xx. The last
  allowed attempt is known from the attempt count (``X-AppEngine-TaskRetryCount`` plus the
  attempts of earlier, self-scheduled tasks), ``max_attempts`` and queue.yaml's
  ``task_retry_limit`` / ``task_age_limit`` (age since the first enqueue).

An untracked task without a policy costs no Datastore operation here.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import random
from collections.abc import Mapping
from typing import Any

from core import db
from core.clock import utc_now
from core.tasks import message, records
from core.tasks.auth.queue_headers import TaskInfo
from core.tasks.errors import PermanentTaskFailure
from core.tasks.queues import QueueConfig, backoff_delay, last_allowed_attempt
from core.tasks.retry import RetryPolicy
from core.tasks.runtime import TaskRuntime
from core.tasks.send import send
from core.tasks.transports.base import TASK_NAME_RE, hashed_task_name

log = logging.getLogger(__name__)

#: How long past its dispatch deadline a running attempt keeps its claim on the record.
LEASE_MARGIN = datetime.timedelta(seconds=30)
#: Seconds before a task waiting for its lock looks again: doubling from the first, at most the cap,
#: each a random half to whole of it (so waiters spread out).
LOCK_WAIT_FIRST = 0.5
LOCK_WAIT_CAP = 5.0
#: Counts the lock waits a queue retried (409s), per queued task, so they are not counted as attempts.
LOCK_WAIT_KIND = "_tasks_lock_wait"


class GaveUp(PermanentTaskFailure):
    """The task failed on its last allowed attempt, or with an error its policy does not retry."""


@dataclasses.dataclass
class Attempt:
    """One attempt of one task, as the steps see it."""

    envelope: message.Envelope
    path: str
    #: 1-based, across the self-scheduled tasks of one task id.
    number: int
    tracked: bool
    target: str | None
    policy: RetryPolicy | None
    config: QueueConfig | None
    #: Why the task is answered without running (``None``: run it).
    skip: str | None = None
    busy: bool = False
    #: Deliveries of this queued task that waited for its lock (answered 409), not counted in ``number``.
    lock_waits: int = 0
    #: The record as this attempt claimed it: its end is one write against it.
    held: records.Held | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a failed attempt leads to."""

    action: str  # "retry" (queue's schedule), "rescheduled", "dead", "cancelled"
    error: PermanentTaskFailure | None = None


def queue_config(runtime: TaskRuntime, queue: str) -> QueueConfig | None:
    """The entry of ``queue`` in the app's queue table (``None`` for one it lacks)."""
    return runtime.queues.get(queue)


def result_ttl(runtime: TaskRuntime) -> datetime.timedelta:
    return datetime.timedelta(seconds=runtime.settings.tasks_result_ttl)


def _deferred_target(runtime: TaskRuntime, envelope: message.Envelope) -> Any:
    if envelope.kind != "deferred":
        return None
    name = envelope.payload.get("target") if isinstance(envelope.payload, dict) else None
    if not isinstance(name, str):
        return None  # no target to run: the runner makes it a dead letter
    return runtime.registry.deferred.find(name)


def _policy_of(runtime: TaskRuntime, envelope: message.Envelope) -> RetryPolicy | None:
    return getattr(_deferred_target(runtime, envelope), "policy", None)


def _deadline(payload: Mapping[str, Any], config: QueueConfig | None) -> datetime.timedelta:
    timeout = payload.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return datetime.timedelta(seconds=timeout)
    return config.dispatch_deadline if config is not None else datetime.timedelta(minutes=10)


def start(runtime: TaskRuntime, envelope: message.Envelope, info: TaskInfo, path: str,
          target: str | None) -> Attempt:
    """Prepare an attempt; a tracked one claims its record (see the module's docstring)."""
    payload = envelope.payload if isinstance(envelope.payload, dict) else {}
    previous = payload.get("attempt")
    # An attempt count beyond what any record can store is not one (it could not be saved).
    previous = previous if type(previous) is int and 0 < previous < db.INT64_MAX // 2 else 0
    queue = info.queue or envelope.queue
    config = queue_config(runtime, queue)
    deferred = _deferred_target(runtime, envelope)
    # The queue counts the deliveries a locked task answered 409 (lock waits); they are not attempts.
    waited = _lock_waits(envelope) if info.retry_count > 0 and getattr(deferred, "lock", None) else 0
    attempt = Attempt(envelope, path, max(previous + info.retry_count + 1 - waited, 1), payload.get("track") is True,
                      target, getattr(deferred, "policy", None), config, lock_waits=waited)
    if not attempt.tracked:
        return attempt

    def fallback() -> records.TaskRecord:
        return records.TaskRecord.new(envelope.id, target=target, queue=queue, kind=envelope.kind,
                                      queue_task=info.task_name, eta=None, ttl=result_ttl(runtime), payload=payload)

    written = records.written(envelope.id, envelope.record, kind=envelope.kind, queue=envelope.queue,
                              payload=payload)
    claim = records.begin(envelope.id, attempt=attempt.number, lease=_deadline(payload, config) + LEASE_MARGIN,
                          fallback=fallback, written=written)
    if claim.verdict == "busy":
        attempt.busy, attempt.skip = True, "another attempt of this task is running"
    elif claim.verdict != "run":
        attempt.skip = {"done": "succeeded before; not run again", "cancelled": "cancelled; not run",
                        "failed": "failed before; not run again"}[claim.verdict]
    else:
        attempt.number, attempt.held = claim.attempts, claim.held
    return attempt


def encode_result(attempt: Attempt, value: Any) -> str | None:
    """The result's record text (tracked tasks only); raises a permanent failure if it can't be kept."""
    if not attempt.tracked:
        return None
    try:
        return records.encode_result(value, what=attempt.target or attempt.envelope.id)
    except records.ResultNotEncodable as exc:
        raise GaveUp(str(exc)) from exc


def succeeded(runtime: TaskRuntime, attempt: Attempt, result: str | None) -> None:
    if attempt.lock_waits:
        db.delete(_lock_wait_key(attempt.envelope))
    if attempt.tracked:
        records.succeed(attempt.envelope.id, result, result_ttl(runtime), held=attempt.held)


def _last_allowed(attempt: Attempt) -> str | None:
    """Why this attempt is the last one allowed, or ``None`` (:func:`~core.tasks.queues.last_allowed_attempt`)."""
    created = datetime.datetime.fromtimestamp(attempt.envelope.created, datetime.UTC)
    config = attempt.config
    return last_allowed_attempt(attempt.number, retry=config.retry if config is not None else None,
                                max_attempts=attempt.policy.max_attempts if attempt.policy is not None else None,
                                age=utc_now() - created, queue=config.name if config is not None else None)


def failed(runtime: TaskRuntime, attempt: Attempt, error: BaseException) -> Decision:
    """Decide and record what a failed attempt leads to (see the module's docstring)."""
    what = attempt.target or attempt.envelope.kind
    give_up: PermanentTaskFailure | None = None
    if isinstance(error, PermanentTaskFailure):
        give_up = error
    elif attempt.policy is not None and not attempt.policy.retries(error):
        give_up = GaveUp(f"{what} raised {type(error).__name__}, which it does not retry: {error}")
    else:
        last = _last_allowed(attempt)
        if last is not None:
            give_up = GaveUp(f"{what} failed on its last allowed attempt ({last}): {error!r}")
    if give_up is not None:
        if give_up is not error:
            give_up.__cause__ = error
        if attempt.tracked and records.fail(attempt.envelope.id, error, result_ttl(runtime),
                                             held=attempt.held) == records.CANCELLED:
            return Decision("cancelled")
        return Decision("dead", give_up)
    backoff = attempt.policy.backoff if attempt.policy is not None else None
    if backoff is None:
        if attempt.tracked and records.retrying(attempt.envelope.id, error, held=attempt.held) == records.CANCELLED:
            return Decision("cancelled")
        return Decision("retry")
    delay = backoff.delay(attempt.number)
    eta = runtime.clock.now() + datetime.timedelta(seconds=delay)
    name = _attempt_name(_send_id(attempt.envelope), attempt.number + 1)
    if attempt.tracked:
        if records.retrying(attempt.envelope.id, error, queue_task=name, eta=eta,
                            held=attempt.held) == records.CANCELLED:
            return Decision("cancelled")
    _schedule_next(runtime, attempt, name, eta)
    log.info("task %s (%s) failed on attempt %d; attempt %d in %.3g s", attempt.envelope.id, what,
             attempt.number, attempt.number + 1, delay)
    return Decision("rescheduled")


def wait_for_lock(runtime: TaskRuntime, attempt: Attempt, info: TaskInfo) -> float | None:
    """A run found its lock held: ``None`` to answer 409 (the queue retries), else the delay it was sent again with.

    The wait is not an attempt: a 409 is counted (and taken off the queue's count at the next
    delivery), a task sent again keeps its attempt number, and a tracked record goes back to
    ``retrying`` without an error. The queue retries a 409 while its next backoff is short and
    it will retry at all; past that the app sends the task again itself, jittered. Deferred
    tasks only (a periodic run's claim belongs to its queued ping).
    """
    envelope = attempt.envelope
    waits = _app_waits(envelope)
    config = attempt.config
    created = datetime.datetime.fromtimestamp(envelope.created, datetime.UTC)
    queue_soon = config is None or (
        backoff_delay(config.retry, info.retry_count + 1) <= LOCK_WAIT_CAP
        and last_allowed_attempt(info.retry_count + 1, retry=config.retry, age=utc_now() - created,
                                 queue=config.name) is None)
    if waits == 0 and queue_soon:
        _count_lock_wait(envelope)
        if attempt.tracked:
            records.waiting(envelope.id, held=attempt.held)
        return None
    delay = lock_wait_delay(waits)
    eta = runtime.clock.now() + datetime.timedelta(seconds=delay)
    name = _attempt_name(f"{_send_id(envelope)}-w{waits + 1}", attempt.number)
    if attempt.tracked and records.waiting(envelope.id, queue_task=name, eta=eta,
                                           held=attempt.held) == records.CANCELLED:
        return 0.0
    _schedule_next(runtime, attempt, name, eta, {"attempt": attempt.number - 1, "lock_waits": waits + 1})
    return delay


def lock_wait_delay(waits: int) -> float:
    """Seconds before a task that waited ``waits`` times looks at its lock again: growing, capped, jittered."""
    return min(LOCK_WAIT_FIRST * 2 ** min(waits, 32), LOCK_WAIT_CAP) * random.uniform(0.5, 1.0)


def _app_waits(envelope: message.Envelope) -> int:
    """How often the app sent this task again to wait for its lock."""
    waits = envelope.payload.get("lock_waits")
    return waits if type(waits) is int and 0 < waits < 10_000 else 0


def _lock_wait_key(envelope: message.Envelope) -> db.Key:
    """Where the 409 lock waits of one queued task (this body) are counted."""
    previous = envelope.payload.get("attempt")
    return db.key(LOCK_WAIT_KIND, f"{_send_id(envelope)}:{previous if type(previous) is int else 0}:"
                                  f"{_app_waits(envelope)}")


def _lock_waits(envelope: message.Envelope) -> int:
    counter = db.get(_lock_wait_key(envelope))
    waits = counter.get("waits") if counter is not None else 0
    return waits if type(waits) is int and waits > 0 else 0


def _count_lock_wait(envelope: message.Envelope) -> None:
    key = _lock_wait_key(envelope)
    counter = db.get(key) or db.Entity(key)
    waits = counter.get("waits")
    counter.update({"waits": (waits if type(waits) is int else 0) + 1, "updated": utc_now()})
    db.put(counter)


def _send_id(envelope: message.Envelope) -> str:
    """The task id, told apart per resend of its dead letter (its attempt names start over each time)."""
    resent = envelope.payload.get("resent")
    return f"{envelope.id}-r{resent}" if type(resent) is int and resent > 0 else envelope.id


def _attempt_name(task_id: str, number: int) -> str:
    """The queue name of a self-scheduled attempt: a duplicate push schedules it only once."""
    name = f"{task_id}-a{number}"
    if TASK_NAME_RE.match(name):
        return name
    return hashed_task_name(name, f"-a{number}", digits=40)


def _schedule_next(runtime: TaskRuntime, attempt: Attempt, name: str, eta: datetime.datetime,
                   changes: Mapping[str, Any] | None = None) -> None:
    """Send the task's next attempt (``changes``: what its payload says differently) as ``name`` at ``eta``."""
    envelope = attempt.envelope
    payload = {**envelope.payload, "attempt": attempt.number, **(changes or {})}
    following = message.Envelope(kind=envelope.kind, payload=payload, queue=envelope.queue, env=envelope.env,
                                 id=envelope.id, created=envelope.created)
    send(runtime, following, path=attempt.path, target=attempt.target, name=name, eta=eta,
         deadline=_timeout_of(payload))


def _timeout_of(payload: Mapping[str, Any]) -> datetime.timedelta | None:
    timeout = payload.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return datetime.timedelta(seconds=timeout)
    return None
