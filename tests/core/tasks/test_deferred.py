"""Deferred calls end to end through the in-process queue and the real /_tasks handler."""
from __future__ import annotations

import datetime
import decimal
import logging
import uuid

import pytest

from core import current, db
from core.module import Module, exposed
from core.tasks import DeferredArgumentError, PermanentTaskFailure, TaskHandle, callDeferred, noRetry, retry_n_times
from core.tasks.auth.signing import SIGNATURE_HEADER, sign_request
from core.tasks.errors import DuplicateTask
from core.tasks.executor import DEAD_LETTER_KIND
from core.tasks.outbox import OUTBOX_KIND, outbox_size, sweep_outbox
from core.tasks.registry import isolated_registry
from core.tasks.transports.base import EnqueueResult, EnqueueStatus

CALLS: list[tuple] = []


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()
    FLAKY.clear()


@callDeferred
def record(*args, **kwargs):
    CALLS.append(("record", args, kwargs, current.user.get(), current.language.get()))


@callDeferred(queue="background")
def on_background():
    CALLS.append(("background",))


FLAKY: dict[str, int] = {}


@callDeferred
def fails_twice(token: str):
    FLAKY[token] = FLAKY.get(token, 0) + 1
    CALLS.append(("fails_twice", FLAKY[token]))
    if FLAKY[token] <= 2:
        raise RuntimeError("transient")


@callDeferred
def fails_permanently():
    CALLS.append(("permanent",))
    raise PermanentTaskFailure("cannot ever work")


@retry_n_times(1)
@callDeferred
def always_fails_limited():
    CALLS.append(("limited",))
    raise RuntimeError("always")


@noRetry
@callDeferred
def no_retry_fails():
    CALLS.append(("no_retry",))
    raise RuntimeError("once")


@callDeferred
def defers_again(depth: int):
    CALLS.append(("again", depth))
    if depth < 3:
        defers_again(depth + 1)


class Invoices(Module):
    @exposed
    def close_month(self, month="2026-10"):
        handle = self.recompute_totals(month=month)
        return {"task": handle.id}

    @callDeferred
    def recompute_totals(self, month: str):
        CALLS.append(("recompute", self, month))

    @callDeferred
    @classmethod
    def class_level(cls, value):
        CALLS.append(("classmethod", cls, value))

    @callDeferred
    @staticmethod
    def static_level(value):
        CALLS.append(("staticmethod", value))


class Index(Module):
    @exposed
    def index(self):
        return "home"

    @exposed
    def defer_many(self, count="100"):
        for i in range(int(count)):
            record(i)
        return "ok"


class User(dict):
    pass


class Users:
    def __init__(self):
        self.people = {"u1": User(id="u1", name="Ada"), "u2": User(id="u2", name="Bob")}

    def load_from_request(self, request):
        return self.people.get(request.headers.get("X-Test-User", ""))

    def load_by_id(self, user_id):
        user = self.people.get(user_id)
        return None if user is None else User(user, reloaded=True)

    def id_of(self, user):
        return user["id"]

    def is_admin(self, user):
        return False


class Environment:
    def __init__(self):
        self.value = None
        self.restored = []

    def serialize(self):
        return {"tenant": self.value}

    def restore(self, data):
        self.restored.append(data)


@pytest.fixture
def app(make_app):
    return make_app({"index": Index, "invoices": Invoices, "archive": Invoices}, users=Users(),
                    languages=("en", "de"))


def test_function_runs_later_with_arguments_intact(app, task_queue):
    key = db.key("invoice", 7)
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    with app.test_request_context():
        handle = record(key, when, amount=decimal.Decimal("1.10"), tags={"a"}, raw=b"")
    assert isinstance(handle, TaskHandle) and handle.queue == "default"
    assert CALLS == []
    task_queue.run_pending()
    (name, args, kwargs, _, _), = CALLS
    assert args == (key, when) and type(args[0]) is db.Key and args[1].tzinfo is None
    assert kwargs == {"amount": decimal.Decimal("1.10"), "tags": {"a"}, "raw": b""}
    assert str(kwargs["amount"]) == "1.10"


def test_method_runs_on_the_live_mounted_instance(app, client, task_queue):
    response = client.get("/invoices/close_month?month=2026-09")
    assert response.status_code == 200
    client.get("/archive/close_month")
    task_queue.run_pending()
    modules = app.extensions["core"].modules
    assert [(c[0], c[1], c[2]) for c in CALLS] == [
        ("recompute", modules["invoices"], "2026-09"), ("recompute", modules["archive"], "2026-10")]


def test_class_and_static_methods(app, task_queue):
    Invoices.class_level(1)
    Invoices.static_level(2)
    task_queue.run_pending()
    assert CALLS == [("classmethod", Invoices, 1), ("staticmethod", 2)]


def test_call_deferred_false_runs_now(app, task_queue):
    record(5, _call_deferred=False)
    app.extensions["core"].modules["invoices"].recompute_totals("x", _call_deferred=False)
    assert [c[0] for c in CALLS] == ["record", "recompute"]
    assert task_queue.pending == []


def test_queue_options(make_app, settings, tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: background\n- name: other\n")  # every queue named must exist
    from tests.conftest import TaskQueue

    app = make_app({"index": Index, "invoices": Invoices, "archive": Invoices}, users=Users(),
                   languages=("en", "de"), settings=settings.replace(queue_yaml=queue_yaml))
    task_queue = TaskQueue(app)
    on_background()
    handle = record(1, _queue="other", _countdown=60, _name="unique-1")
    requests = [t.request for t in task_queue.pending]
    assert [r.queue for r in requests] == ["background", "other"]
    assert requests[1].name == "unique-1" and handle.name == "unique-1"
    assert requests[1].eta is not None and requests[1].eta > datetime.datetime.now(datetime.UTC)
    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    assert record(2, _eta=eta).eta == eta


@pytest.mark.parametrize("options, message", [
    ({"_countdown": 5, "_eta": datetime.datetime(2030, 1, 1)}, "not both"),
    ({"_countdown": -1}, "_countdown"),
    ({"_eta": datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=31)}, "30 days"),
    ({"_eta": "tomorrow"}, "_eta must be a datetime"),
    ({"_name": "not valid!"}, "invalid task name"),
    ({"_queue": "bad queue"}, "invalid queue name"),
])
def test_bad_options_fail_at_the_call(app, task_queue, options, message):
    with pytest.raises(ValueError, match=message):
        record(1, **options)
    assert task_queue.pending == []


def test_unserializable_argument_fails_at_the_call_naming_it(app, task_queue):
    class Opaque:
        pass

    with pytest.raises(DeferredArgumentError) as info:
        record(1, {"inner": [Opaque()]})
    assert isinstance(info.value, TypeError)
    assert "Opaque" in str(info.value) and "record" in str(info.value) and "inner" in str(info.value)
    assert task_queue.pending == []


def test_method_on_unmounted_instance_fails_at_the_call(app, task_queue):
    loose = Invoices("loose", "loose")
    with pytest.raises(DeferredArgumentError, match="not mounted"):
        loose.recompute_totals("x")
    assert task_queue.pending == []


def test_two_targets_with_one_name_raise():
    with isolated_registry():
        def target():
            pass
        target.__qualname__ = "dup_target"
        callDeferred(target)

        def other():
            pass
        other.__qualname__ = "dup_target"
        with pytest.raises(DuplicateTask):
            callDeferred(other)


def test_user_and_language_are_restored(app, client, task_queue):
    @app.route("/defer-as-user")
    def defer_as_user():
        record("hi")
        return "ok"

    assert client.get("/defer-as-user", headers={"X-Test-User": "u2", "Accept-Language": "de"}).status_code == 200
    client.get("/defer-as-user")
    task_queue.run_pending()
    (_, _, _, user, lang), (_, _, _, anonymous, default_lang) = CALLS
    assert user == {"id": "u2", "name": "Bob", "reloaded": True} and lang == "de"
    assert anonymous is None and default_lang == "en"


def test_custom_environment_travels(make_app):
    env = Environment()
    app = make_app({}, environment=env)
    env.value = "acme"
    record(1)
    from tests.conftest import TaskQueue

    TaskQueue(app).run_pending()
    assert env.restored == [{"tenant": "acme"}]


def test_fails_twice_then_succeeds_runs_three_times(app, task_queue):
    fails_twice("t")
    outcomes = task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert [c for c in CALLS] == [("fails_twice", 1), ("fails_twice", 2), ("fails_twice", 3)]
    assert [o.status for o in outcomes] == [500, 500, 200]


def test_failure_is_reraised_in_the_test(app, task_queue):
    from core.tasks.transports.inline import TaskFailed

    fails_twice("u")
    with pytest.raises(TaskFailed) as info:
        task_queue.run_pending()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_permanent_failure_runs_once_and_is_recorded(app, task_queue):
    fails_permanently()
    outcomes = task_queue.run_pending(max_attempts=5, raise_errors=False)
    assert CALLS == [("permanent",)]
    assert outcomes[0].status == 200 and isinstance(outcomes[0].error, PermanentTaskFailure)
    letters = db.Query(DEAD_LETTER_KIND).run()
    assert len(letters) == 1
    letter = letters[0]
    assert letter["target"].endswith("fails_permanently") and "cannot ever work" in letter["error"]
    assert letter["attempts"] == 1 and letter["payload"] and letter["created"]


def test_retry_n_times_and_no_retry(app, task_queue):
    always_fails_limited()
    no_retry_fails()
    task_queue.run_pending(max_attempts=10, raise_errors=False)
    assert CALLS.count(("limited",)) == 2
    assert CALLS.count(("no_retry",)) == 1
    assert len(db.Query(DEAD_LETTER_KIND).run()) == 2


def test_deferring_from_a_task_defers_again(app, task_queue):
    defers_again(1)
    outcomes = task_queue.run_pending()
    assert CALLS == [("again", 1), ("again", 2), ("again", 3)]
    assert len(outcomes) == 3


def test_many_calls_in_one_request_are_created_in_one_batch(app, client, task_queue):
    transport = task_queue.transport
    batches = []
    original = transport.enqueue_many

    def spy(requests):
        batches.append(len(requests))
        return original(requests)

    transport.enqueue_many = spy
    assert client.get("/index/defer_many?count=100").status_code == 200
    assert batches == [100]
    assert len(task_queue.pending) == 100


def test_failed_enqueue_is_kept_in_the_outbox_and_swept(app, client, task_queue):
    transport = task_queue.transport
    original = transport.enqueue_many
    transport.enqueue_many = lambda requests: [EnqueueResult(EnqueueStatus.FAILED, error=OSError("down"))
                                               for _ in requests]
    assert client.get("/index/defer_many?count=3").status_code == 200
    assert outbox_size() == 3 and task_queue.pending == []
    transport.enqueue_many = original
    from core.tasks.runtime import get_runtime

    assert sweep_outbox(get_runtime(), older_than=datetime.timedelta(0)) == 3
    assert db.Query(OUTBOX_KIND).run() == []
    task_queue.run_pending()
    assert sorted(c[1][0] for c in CALLS) == [0, 1, 2]


def test_transactional_call_runs_only_if_committed(app, task_queue):
    def commit(i):
        db.put(db.Entity(db.key("tx", i)))
        record(i)

    def roll_back(i):
        record(i)
        raise RuntimeError("roll back")

    for i in range(200):
        if i % 3 == 0:
            with pytest.raises(RuntimeError):
                db.run_in_transaction(roll_back, i)
        else:
            db.run_in_transaction(commit, i)
    task_queue.run_pending()
    ran = sorted(c[1][0] for c in CALLS)
    assert ran == [i for i in range(200) if i % 3 != 0]
    assert db.Query(OUTBOX_KIND).run() == [], "committed outbox entries are deleted once enqueued"


def test_crash_between_commit_and_enqueue_loses_nothing(app, task_queue):
    transport = task_queue.transport
    original = transport.enqueue_many

    def crash(requests):  # the process dies after the commit, before the queue answers
        raise OSError("killed")

    transport.enqueue_many = crash

    def work():
        db.put(db.Entity(db.key("tx", "crash")))
        record("survivor")

    db.run_in_transaction(work)
    assert task_queue.pending == [] and outbox_size() == 1
    transport.enqueue_many = original
    from core.tasks.runtime import get_runtime

    assert sweep_outbox(get_runtime(), older_than=datetime.timedelta(0)) == 1
    task_queue.run_pending()
    assert [c[1] for c in CALLS] == [("survivor",)]


def test_large_payload_is_stored_and_cleaned_up(make_app, settings):
    app = make_app({}, settings=settings.replace(tasks_payload_limit=2_000))
    from tests.conftest import TaskQueue

    queue = TaskQueue(app)
    blob = uuid.uuid4().bytes * 200_000  # 3.2 MB: several payload entities
    record(blob)
    body = queue.pending[0].request.body
    assert len(body) < 2_000
    assert len(db.Query("_tasks_payload").keys_only().run()) >= 4
    queue.run_pending()
    assert CALLS[0][1] == (blob,)
    assert db.Query("_tasks_payload").keys_only().run() == []


def _post(client, body, headers=None):
    return client.post("/_tasks/deferred", data=body, headers=headers or {})


def test_forged_unsigned_tampered_and_garbage_requests_run_nothing(app, client, task_queue, settings):
    record("legit")
    good = task_queue.pending.pop(0).request
    body, headers = good.body, dict(good.headers)

    assert _post(client, body).status_code == 403                                   # unsigned
    forged = sign_request("another-secret", "POST", "/_tasks/deferred", body)
    assert _post(client, body, {SIGNATURE_HEADER: forged}).status_code == 403      # wrong key
    tampered = body.replace(b"legit", b"evil!")
    assert _post(client, tampered, headers).status_code == 403                      # tampered
    other_path = sign_request(settings.tasks_secret, "POST", "/_tasks/queryIter", body)
    assert _post(client, body, {SIGNATURE_HEADER: other_path}).status_code == 403  # signed for another route
    assert _post(client, b"\x00garbage", {SIGNATURE_HEADER: "t=1,v1=zz"}).status_code in (400, 403)
    assert _post(client, b"", {SIGNATURE_HEADER: "nonsense"}).status_code in (400, 403)
    assert client.get("/_tasks/deferred").status_code in (404, 405)
    assert CALLS == []
    assert _post(client, body, headers).status_code == 200                          # the real one
    assert [c[1] for c in CALLS] == [("legit",)]


def test_signed_but_undecodable_or_unknown_is_a_recorded_permanent_failure(app, client, settings):
    unknown = (b'{"v": 1, "id": "x", "kind": "deferred", "queue": "default", "created": 0, '
               b'"payload": {"target": "no.such.task", "args": [], "kwargs": {}}}')
    for body in (b"not json at all", unknown):
        signature = sign_request(settings.tasks_secret, "POST", "/_tasks/deferred", body)
        response = _post(client, body, {SIGNATURE_HEADER: signature})
        assert response.status_code == 200
    errors = sorted(letter["error"].split(":")[0] for letter in db.Query(DEAD_LETTER_KIND).run())
    assert errors == ["PayloadError", "TaskNotFound"]
    assert CALLS == []


def test_retry_warning_threshold_logs_and_mails(make_app, caplog):
    mails = []
    app = make_app({}, admin_mail=lambda subject, text: mails.append(subject))
    from tests.conftest import TaskQueue

    queue = TaskQueue(app)
    fails_twice("w")
    queue.pending[0].retry_count = 25
    with caplog.at_level(logging.ERROR):
        queue.run_pending(raise_errors=False)
    assert any("retry 25" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert mails == ["Task keeps failing"]


class RemoteLikeQueue:
    """The inline queue as a remote queue looks to the dispatcher: batches cost round trips."""

    cheap_batches = False

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.fail = False

    def enqueue_many(self, requests):
        self.calls.append(len(requests))
        if self.fail:
            return [EnqueueResult(EnqueueStatus.FAILED, error=OSError("down")) for _ in requests]
        return self.inner.enqueue_many(requests)

    def close(self):
        pass


def test_large_batch_for_a_remote_queue_goes_through_one_outbox_write(make_app):
    from core.tasks.outbox import wait_for_background
    from core.tasks.transports.inline import InlineTransport
    from tests.conftest import TaskQueue

    inner = InlineTransport()
    remote = RemoteLikeQueue(inner)
    app = make_app({"index": Index}, transport=remote)
    remote.fail = True  # the background creation fails: everything must wait in the outbox
    assert app.test_client().get("/index/defer_many?count=40").status_code == 200
    wait_for_background()
    assert outbox_size() == 40 and len(db.Query(OUTBOX_KIND).run()) == 1, "one entity holds the batch"
    remote.fail = False
    from core.tasks.runtime import get_runtime

    assert sweep_outbox(get_runtime(), older_than=datetime.timedelta(0)) == 40
    assert outbox_size() == 0
    assert len(inner.pending) == 40 and all(t.request.name.startswith("ob-") for t in inner.pending)
    # Creating the same batch again (a sweep after a crash before the delete) is refused as duplicates.
    again = inner.enqueue_many([t.request for t in inner.pending])
    assert {r.status for r in again} == {EnqueueStatus.DUPLICATE} and len(inner.pending) == 40
    TaskQueue(app, transport=inner).run_pending()
    assert sorted(c[1][0] for c in CALLS) == list(range(40))


def test_large_batch_is_created_in_the_background_after_the_response(make_app):
    from core.tasks.outbox import wait_for_background
    from core.tasks.transports.inline import InlineTransport

    inner = InlineTransport()
    remote = RemoteLikeQueue(inner)
    app = make_app({"index": Index}, transport=remote)
    assert app.test_client().get("/index/defer_many?count=40").status_code == 200
    wait_for_background()
    assert remote.calls == [40] and len(inner.pending) == 40
    assert outbox_size() == 0, "the outbox entry is deleted once every task is created"
    assert app.test_client().get("/index/defer_many?count=5").status_code == 200
    assert remote.calls == [40, 5], "small batches are created before the response"
