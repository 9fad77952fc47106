"""Query iterators: run a Datastore query over a chain of tasks, one time-boxed chunk per task.

A subclass of :class:`QueryIter` says what to do with each entity (``handleEntry``), when the run
is over (``handleFinish``) and after a failed entity (``handleError``);
``Reindex.startIterOnQuery(query, customData)`` returns at once and the first chunk runs as a task
posted to ``/_tasks/queryIter``.

The rooms: :mod:`.api` (the classes and starting a run), :mod:`.runs` (run records: reading,
stopping, resuming, step names) and :mod:`.chunk` (one step of a run, the executor's runner for
this kind). The ViUR names are re-exported here, where stored runs name ``DeleteEntitiesIter``.

How a run behaves (and why it differs from ViUR's five entities per task):

- **Chunks fill a time budget.** A chunk reads large pages by cursor and handles entities until its
  budget (``chunkSeconds``, default ``DEFAULT_CHUNK_SECONDS``, well inside any dispatch
  deadline) is used up, then queues the next step. Pages shrink to what the budget can take once
  the handling rate is known, so slow handlers do not fetch entities they will not reach.
- **One run record is the truth.** Kind ``RUN_KIND`` keeps the class, query, custom data,
  caller environment, status (running / finished / stopped / failed), position, processed count
  and times, and the total the query matched when the run started (a COUNT aggregation: the
  dashboard's progress bar and ETA; the query may change while the run goes on). The count runs
  once the first chunk is queued, beside it, so it never holds the scan back. A position is
  the cursor of the current page plus the keys already handled on it, so a chunk can stop after
  any entity, also when ``handleEntry`` deletes what it handled.
  Progress is committed transactionally at page ends every ``checkpointSeconds`` and when a chunk
  ends; a retried chunk goes on from the last commit.
- **A chain cannot fork.** Step tasks are named after a hash of (run, generation, step). A step
  that is retried after it committed sends its successor again under the same name, which the
  queue refuses; a step whose record has moved on (another execution committed it, the run was
  stopped or resumed) does nothing. Resuming starts a new generation, so its names are fresh.
- **handleFinish runs once.** The step that exhausts the query claims the finish on the record in
  a transaction, calls ``handleFinish`` and marks the run finished. A retry finds it finished or
  claimed; the claim is renewed while ``handleFinish`` runs, and one not renewed for
  ``finishLease`` (its holder died) may be taken over.
- **Errors.** ``handleEntry`` is retried in place ``entryRetries`` times, then ``handleError``
  decides: ``True`` goes on, ``False`` stops the run keeping its position (see ``resume_run``),
  raising ends the chunk after saving progress so the queue retries it from the failed entity.
  An unknown class id fails the run (recorded) and answers 2xx: no endless retry.
- **Context travels.** The caller's user, language and custom environment are captured once at
  the start and carried in every step's envelope, as for deferred calls.
"""
from __future__ import annotations

from core.tasks.queryiter.api import DeleteEntitiesIter, MetaQueryIter, QueryIter

__all__ = ["DeleteEntitiesIter", "MetaQueryIter", "QueryIter"]
