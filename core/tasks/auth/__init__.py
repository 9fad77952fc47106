"""Verification of requests to ``/_tasks/*``: who sent them and what the queue says about them.

Three independent proofs, combined by :class:`core.tasks.auth.policy.RequestVerifier` according
to where the app runs:

* an HMAC signature (``X-Tasks-Signature``, :mod:`.signing`) over method, path, time and body,
  made with the app's secret when the task was enqueued, so only payloads this app produced run;
* the queue headers App Engine strips from outside traffic (``X-AppEngine-QueueName``, ...,
  ``X-Appengine-Cron``, :mod:`.queue_headers`), trustworthy only when the app runs on App Engine;
* an OIDC bearer token from Google (:mod:`.oidc`), which Cloud Tasks HTTP targets and Cloud
  Scheduler attach.

Everything works on plain values (header mappings, bytes, strings): no web framework, no network
at import. Every failure to verify is a ``Forbidden`` (403) or ``BadTaskRequest`` (400), never a
crash: a forged request must not turn into a 5xx that the queue would retry.
"""
