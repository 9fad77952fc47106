"""The durable local queue: Cloud Tasks' push semantics on one machine, stored in SQLite.

Its rooms share one SQLite file (WAL mode, so readers never block the single writer):

* :mod:`.store` (:class:`~.store.LocalQueueStore`) owns every SQL statement; any process may open
  the file. :mod:`.rows` holds the named rows it reads and writes.
* :mod:`.transport` (:class:`~.transport.LocalTransport`) is the
  :class:`~core.tasks.transports.base.Transport` the app's workers use: one call, one
  transaction, however many tasks it carries, then a wakeup datagram (:mod:`.wake`).
* :mod:`.dispatcher` (:class:`~.dispatcher.LocalDispatcher`) is the one process that pushes due
  tasks to the app over HTTP (:mod:`.http`) with the headers App Engine's Cloud Tasks sends,
  retrying with the queue's backoff (:mod:`.policy`). Run it with
  ``python -m core.tasks.transports.local --db PATH --url URL --queue-yaml PATH`` (it stops on
  SIGTERM or SIGINT), or in-process with ``start()``/``stop()`` or ``run_until_idle()``.

Headers sent with every push (App Engine target semantics):

* ``X-AppEngine-QueueName``: the short queue name.
* ``X-AppEngine-TaskName``: the task's name; unnamed tasks get a random numeric one, as on
  Cloud Tasks.
* ``X-AppEngine-TaskRetryCount``: previous attempts of this task, whatever their outcome.
* ``X-AppEngine-TaskExecutionCount``: previous attempts that got an HTTP response from the app
  (Cloud Tasks: "times the task received a response"), not counting 503, which Cloud Tasks
  treats as "no instance available". Timeouts and refused connections do not count.
* ``X-AppEngine-TaskETA``: the attempt's schedule time in seconds since the epoch.
* ``X-AppEngine-TaskPreviousResponse``: the previous attempt's HTTP status, on retries that
  follow a response.
"""
