"""core.db against the real Datastore emulator."""
from __future__ import annotations

import contextvars
import datetime
import threading

import pytest

from core import db


def make(kind: str, name: str | int, **props) -> db.Entity:
    entity = db.Entity(db.key(kind, name))
    entity.update(props)
    return entity


def test_put_get_delete_round_trip(datastore):
    entity = make("invoice", "a", total=12, created=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC))
    db.put(entity)
    loaded = db.get(entity.key)
    assert isinstance(loaded, db.Entity) and isinstance(loaded.key, db.Key)
    assert loaded == {"total": 12, "created": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)}
    db.delete(entity.key)
    assert db.get(entity.key) is None


def test_get_multi_keeps_order_and_gaps(datastore):
    db.put([make("k", "a", n=1), make("k", "c", n=3)])
    got = db.get([db.key("k", "c"), db.key("k", "b"), db.key("k", "a")])
    assert [g and g["n"] for g in got] == [3, None, 1]


def test_incomplete_key_is_completed_on_put(datastore):
    entity = db.Entity(db.key("auto"))
    entity["x"] = 1
    db.put(entity)
    assert isinstance(entity.key, db.Key) and entity.key.id is not None
    assert db.get(entity.key)["x"] == 1


def test_keys_inside_properties_come_back_as_core_keys(datastore):
    ref = db.key("user", "u1")
    db.put(make("k", "x", owner=ref, owners=[ref]))
    loaded = db.get(db.key("k", "x"))
    assert type(loaded["owner"]) is db.Key and loaded["owner"] == ref
    assert type(loaded["owners"][0]) is db.Key


def test_key_urlsafe_round_trip(datastore):
    for key in (db.key("a", 1), db.key("a", "name with spaces/ä"), db.key("child", 7, parent=db.key("p", "x")),
                db.Key("a", 5, project="other", namespace="ns")):
        text = key.to_urlsafe()
        assert text == str(key)
        assert db.Key.from_urlsafe(text) == key
        assert db.Key.from_urlsafe(text).namespace == key.namespace


@pytest.mark.parametrize("bad", ["", "not-a-key", "!!!", "aGVsbG8", b"\xff\xfe"])
def test_malformed_key_string_raises(bad):
    with pytest.raises(db.KeyError_):
        db.Key.from_urlsafe(bad)


def test_multi_write_over_500_entities_is_chunked(datastore):
    entities = [make("bulk", i + 1, n=i) for i in range(1234)]
    db.put(entities)
    assert len(db.Query("bulk").keys_only().run()) == 1234
    db.delete([e.key for e in entities])
    assert db.Query("bulk").keys_only().run() == []


def test_filters_and_orders(datastore):
    db.put([make("inv", i, year=2025 + i % 2, total=i) for i in range(1, 21)])
    result = db.Query("inv").filter("year =", 2026).filter("total >=", 10).order("-total").run()
    assert [e["total"] for e in result] == [19, 17, 15, 13, 11]
    result = db.Query("inv").filter("total", "<", 4).order("total").run()
    assert [e["total"] for e in result] == [1, 2, 3]
    assert db.Query("inv").order("total").limit(3).run() == db.Query("inv").order("total").run(limit=3)


def test_unknown_operator_raises_before_any_call():
    with pytest.raises(ValueError, match="unknown filter operator '~='"):
        db.Query("inv").filter("year ~=", 1)


def test_cursor_paging_across_more_than_300_results(datastore):
    db.put([make("page", i, n=i) for i in range(1, 1001)])
    query = db.Query("page").order("n")
    first = query.fetch_page(700)
    assert len(first.entities) == 700 and first.more
    second = query.fetch_page(700, first.cursor)
    assert [e["n"] for e in second.entities] == list(range(701, 1001))
    assert not second.more
    seen = [e["n"] for e in db.Query("page").order("n").iter(page_size=450)]
    assert seen == list(range(1, 1001))


def test_query_round_trips_through_its_dict(datastore):
    db.put([make("qd", i, n=i) for i in range(1, 11)])
    query = db.Query("qd").filter("n >", 3).order("-n").limit(4)
    rebuilt = db.Query.from_dict(query.to_dict())
    assert [e["n"] for e in rebuilt.run()] == [10, 9, 8, 7]
    assert query.is_cursor_resumable
    assert not db.Query("qd").filter("n in", [1, 2]).is_cursor_resumable


def test_transaction_commits_and_runs_on_commit(datastore):
    ran = []

    def work():
        db.put(make("tx", "a", n=1))
        db.on_commit(lambda: ran.append("committed"))
        assert db.is_in_transaction()
        return "result"

    assert db.run_in_transaction(work) == "result"
    assert db.get(db.key("tx", "a"))["n"] == 1
    assert ran == ["committed"] and not db.is_in_transaction()


def test_transaction_rolls_back_on_error(datastore):
    ran = []

    def work():
        db.put(make("tx", "b", n=1))
        db.on_commit(lambda: ran.append("committed"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        db.run_in_transaction(work)
    assert db.get(db.key("tx", "b")) is None
    assert ran == []


def test_transaction_retries_on_contention(datastore):
    db.put(make("counter", "c", n=0))
    attempts = []
    barrier = threading.Barrier(2)

    def increment(wait: bool) -> None:
        attempts.append(1)
        entity = db.get(db.key("counter", "c"))
        if wait and len(attempts) <= 2:
            barrier.wait(timeout=10)
        entity["n"] += 1
        db.put(entity)

    errors = []

    def worker():
        try:
            db.run_in_transaction(increment, True)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert db.get(db.key("counter", "c"))["n"] == 2
    assert len(attempts) >= 3, "one of the two colliding transactions must have been retried"


def test_transaction_refuses_more_than_500_writes(datastore):
    def work():
        db.put([make("big", i + 1) for i in range(501)])

    with pytest.raises(ValueError, match="at most 500"):
        db.run_in_transaction(work)
    assert db.Query("big").keys_only().run() == []


def test_put_rejects_non_entities_without_partial_write(datastore):
    with pytest.raises(TypeError, match="dict"):
        db.put([make("pw", 1), {"not": "an entity"}])
    assert db.get(db.key("pw", 1)) is None


# --- keys without a project, as ViUR code writes them ------------------------------------------

@pytest.fixture
def tenant_store(datastore, settings):
    """The active store in namespace ``tenant-a``; the plain one is active again afterwards."""
    store = db.configure(settings.replace(namespace="tenant-a"))
    yield store
    db.configure(settings)


def test_key_without_project_takes_project_and_namespace_of_the_active_store(tenant_store):
    key = db.Key("Invoice", 5)
    assert (key.project, key.namespace, key.flat_path) == ("test-project", "tenant-a", ("Invoice", 5))
    assert key == db.key("Invoice", 5) and type(key) is db.Key
    entity = db.Entity(key)
    entity["total"] = 12
    db.put(entity)
    assert db.get(db.Key("Invoice", 5))["total"] == 12
    assert [e.key for e in db.Query("Invoice").run()] == [key]  # the query runs in the store's namespace


def test_key_with_a_parent_takes_the_parents_project_and_namespace(tenant_store):
    parent = db.Key("Invoice", 5)
    child = db.Key("Line", "first", parent=parent)
    assert type(child) is db.Key and child.parent == parent
    assert (child.project, child.namespace, child.flat_path) == ("test-project", "tenant-a",
                                                                 ("Invoice", 5, "Line", "first"))
    line = db.Entity(child)
    line["n"] = 1
    db.put(line)
    assert db.get(db.Key("Line", "first", parent=db.Key("Invoice", 5)))["n"] == 1
    assert [e.key for e in db.Query("Line").ancestor(parent).run()] == [child]
    assert db.Key("Line", "first", parent=parent, namespace="tenant-a") == child


def test_explicit_project_or_namespace_is_kept(tenant_store):
    assert db.Key("Invoice", 5, namespace="other").namespace == "other"
    explicit = db.Key("Invoice", 5, project="elsewhere")
    assert (explicit.project, explicit.namespace) == ("elsewhere", None)


def test_keys_follow_the_store_configured_when_they_are_made(datastore, settings):
    before = db.Key("Invoice", 5)
    db.configure(settings.replace(project="second-project", namespace="b"))
    try:
        after = db.Key("Invoice", 5)
    finally:
        db.configure(settings)
    assert (before.project, before.namespace) == ("test-project", None)
    assert (after.project, after.namespace) == ("second-project", "b")


def test_keys_without_project_round_trip_through_core_json(tenant_store, settings):
    from core import json as tagged_json

    parent = db.Key("Invoice", 5)
    keys = [parent, db.Key("Line", "first", parent=parent), db.Key("Invoice"), db.Key("Invoice", "x", namespace="b"),
            db.Key("Invoice", 7, namespace="")]
    texts = [tagged_json.dumps(key) for key in keys]
    db.configure(settings.replace(project="other-project"))  # decoding must not take the active store's parts
    decoded = [tagged_json.loads(text) for text in texts]
    def parts(key: db.Key) -> tuple:
        return key.project, key.namespace, key.flat_path  # partial keys never compare equal

    assert [parts(k) for k in decoded] == [parts(k) for k in keys] and {type(k) for k in decoded} == {db.Key}
    assert parts(decoded[0]) == ("test-project", "tenant-a", ("Invoice", 5)) and decoded[1].parent == parent


def test_in_an_app_context_keys_take_that_apps_project_and_namespace(make_app, settings):
    first = make_app({}, settings=settings.replace(project="first-project", namespace="one"))
    second = make_app({}, settings=settings.replace(project="second-project", namespace="two"))
    with first.app_context():
        invoice = db.Key("Invoice", 5)
        entity = db.Entity(invoice)
        entity["app"] = "first"
        db.put(entity)
    with second.app_context():
        other = db.Key("Invoice", 5)
        assert db.get(other) is None  # another project: the first app's entity is not there
    assert (invoice.project, invoice.namespace) == ("first-project", "one")
    assert (other.project, other.namespace) == ("second-project", "two")
    with first.app_context():
        assert db.get(db.Key("Invoice", 5))["app"] == "first"


# --- optimistic writes, without a transaction -----------------------------------------------------

def test_a_write_based_on_a_version_is_refused_once_the_entity_changed(datastore):
    first = db.put_versioned(make("doc", "v", n=1))
    entity, version = db.get_versioned(db.key("doc", "v"))
    assert entity == {"n": 1} and isinstance(entity, db.Entity) and version == first
    entity["n"] = 2
    second = db.put_if_unchanged(entity, version)
    assert second is not None and second != first
    entity["n"] = 3
    assert db.put_if_unchanged(entity, version) is None, "based on a version that is no longer stored"
    assert db.get_versioned(db.key("doc", "v")) == ({"n": 2}, second)
    db.delete(entity.key)
    assert db.put_if_unchanged(entity, second) is None, "deleted since"
    assert db.get(entity.key) is None


def test_a_write_based_on_absence_only_creates(datastore):
    assert db.get_versioned(db.key("doc", "new")) == (None, db.ABSENT)
    assert db.put_if_unchanged(make("doc", "new", n=1), db.ABSENT) is not None
    assert db.put_if_unchanged(make("doc", "new", n=2), db.ABSENT) is None, "it exists now"
    assert db.get(db.key("doc", "new")) == {"n": 1}


def test_versioned_writes_in_a_transaction_join_it_or_refuse(datastore):
    def body() -> int | None:
        with pytest.raises(RuntimeError, match="put_if_unchanged works outside a transaction"):
            db.put_if_unchanged(make("doc", "t", n=0), db.ABSENT)
        return db.put_versioned(make("doc", "t", n=1))

    assert db.run_in_transaction(body) is None, "its version is known only when the transaction commits"
    assert db.get(db.key("doc", "t")) == {"n": 1}


def test_a_transaction_that_read_an_entity_fails_when_a_conditional_write_lands_first(datastore):
    version = db.put_versioned(make("doc", "race", state="queued"))

    def claim() -> None:  # another instance, outside the transaction
        with db.using(datastore):
            written.append(db.put_if_unchanged(make("doc", "race", state="running"), version))

    def cancel() -> None:
        entity = db.get(db.key("doc", "race"))
        thread = threading.Thread(target=claim)
        thread.start()
        thread.join()
        entity["state"] = "cancelled"
        db.put(entity)

    written: list[int | None] = []

    with pytest.raises(db.TransactionFailedError):
        db.run_in_transaction(cancel, retries=0)
    assert written[0] is not None and db.get(db.key("doc", "race"))["state"] == "running"


@pytest.mark.parametrize("value", [
    None, True, 0, -(2 ** 63), 2 ** 63 - 1, 1.5, "", "text", "ü" * 600, ["a", "b"], [], [1, "a"],
    datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC), datetime.datetime(2026, 1, 2, 3, 4, 5),
    b"bytes", {"nested": 1},
])
@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("path", [("doc", "enc"), ("doc", 42, "part", "p1")])
@pytest.mark.parametrize("namespace", [None, "tenant"])
def test_the_fast_entity_encoding_is_the_librarys(datastore, value, indexed, path, namespace):
    from google.cloud.datastore import helpers

    entity = db.Entity(db.key(*path, namespace=namespace), exclude_from_indexes=() if indexed else ("v",))
    entity.update({"v": value, "other": "x"})
    if isinstance(value, dict):
        entity["v"] = db.Entity()
        entity["v"].update(value)
    assert db.entities.entity_protobuf(entity) == helpers.entity_to_protobuf(entity)._pb
