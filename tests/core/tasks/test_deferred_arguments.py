"""A deferred call with an argument that cannot travel fails at the call, naming it as the caller wrote it."""
from __future__ import annotations

import pytest

from core.module import Module
from core.tasks import DeferredArgumentError, callDeferred


@callDeferred
def send_mail(to: str, attachment: object = None) -> None:
    raise AssertionError("never queued, never run")


class Mailer(Module):
    @callDeferred
    def send(self, to: str, body: object) -> None:
        raise AssertionError("never queued, never run")


class Opaque:
    pass


@pytest.fixture
def app(make_app):
    return make_app({"mailer": Mailer})


def refused(call, *args, **kwargs) -> DeferredArgumentError:
    with pytest.raises(DeferredArgumentError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert isinstance(error, TypeError)
    assert "task[" not in str(error) and "payload" not in str(error)
    return error


def test_a_keyword_argument_is_named_with_the_place_inside_it(app, task_queue, tmp_path):
    with open(tmp_path / "report.txt", "w") as file:
        error = refused(send_mail, "ada@example.com", attachment=["report.txt", file])
    assert str(error) == "send_mail(attachment=...)[1]: cannot serialize object of type TextIOWrapper"
    assert (error.function, error.argument) == ("send_mail", "attachment=...")
    assert task_queue.pending == []


@pytest.mark.parametrize("args, kwargs, message", [
    (({"foo": Opaque()},), {}, "send_mail(args[0])['foo']: cannot serialize object of type Opaque"),
    (("x", [1, (2, Opaque())]), {}, "send_mail(args[1])[1][1]: cannot serialize object of type Opaque"),
    (("x",), {"attachment": {Opaque()}}, "send_mail(attachment=...).members[0]: cannot serialize object of type"),
    (("x",), {"attachment": {Opaque(): 1}}, "send_mail(attachment=...).keys[0]: cannot serialize object of type"),
])
def test_positional_and_nested_places_are_named(app, task_queue, args, kwargs, message):
    assert str(refused(send_mail, *args, **kwargs)).startswith(message)
    assert task_queue.pending == []


def test_a_value_that_contains_itself_is_named(app, task_queue):
    loop: list[object] = []
    loop.append(loop)
    assert str(refused(send_mail, loop)) == "send_mail(args[0])[0]: cannot serialize a list that contains itself"


def test_a_method_is_named_by_its_class_and_self_is_not_counted(app, task_queue):
    mailer = app.extensions["core"].modules["mailer"]
    error = refused(mailer.send, "ada@example.com", Opaque())
    assert str(error) == "Mailer.send(args[1]): cannot serialize object of type Opaque"


class BadEnvironment:
    def serialize(self) -> object:
        return {"tenant": Opaque()}

    def restore(self, data: object) -> None:
        pass


def test_an_environment_that_cannot_travel_is_named_as_such(make_app):
    app = make_app({}, environment=BadEnvironment())
    with app.app_context():
        error = refused(send_mail, "ada@example.com")
    assert str(error) == ("cannot defer send_mail: the app's environment serialize() gave a value that cannot "
                          "travel: cannot serialize object of type Opaque at serialize()['tenant']")
