"""The module tree and the app factory."""
from __future__ import annotations

import pytest

from core import current
from core.module import Module, ModuleTree, exposed


class Shop(Module):
    @exposed
    def index(self):
        return f"index of {self.module_path}"

    @exposed
    def view(self, item, full="0"):
        return {"item": item, "full": full, "module": self.module_name}

    @exposed(methods=("POST",))
    def buy(self, item):
        return f"bought {item}"

    @exposed
    def who(self):
        user = current.user.get()
        return {"user": user, "language": current.language.get()}

    def internal(self):  # not exposed
        return "secret"


class Users:
    def load_from_request(self, request):
        return request.headers.get("X-User")

    def load_by_id(self, user_id):
        return user_id

    def id_of(self, user):
        return user

    def is_admin(self, user):
        return False


@pytest.fixture
def app(make_app):
    return make_app({"shop": Shop, "outlet": Shop, "index": Shop}, users=Users(), languages=("en", "de", "fr"))


def test_exposed_methods_are_routed_with_path_and_query_arguments(client):
    assert client.get("/shop/view/42?full=1").get_json() == {"item": "42", "full": "1", "module": "shop"}
    assert client.get("/outlet/view/7").get_json() == {"item": "7", "full": "0", "module": "outlet"}
    assert client.get("/shop").get_data(as_text=True) == "index of shop"
    assert client.get("/").get_data(as_text=True) == "index of index"


def test_methods_and_unexposed_names(client):
    assert client.get("/shop/buy/1").status_code == 405
    assert client.post("/shop/buy", data={"item": "hat"}).get_data(as_text=True) == "bought hat"
    assert client.get("/shop/internal").status_code == 404
    assert client.get("/shop/view").status_code == 404, "a missing argument is not found, not a crash"
    assert client.get("/shop/view/1/2/3").status_code == 404


def test_current_user_and_language_during_a_request(client):
    data = client.get("/shop/who", headers={"X-User": "ada", "Accept-Language": "fr;q=0.9, de;q=0.8"}).get_json()
    assert data == {"user": "ada", "language": "fr"}
    assert client.get("/shop/who?lang=de").get_json() == {"user": None, "language": "de"}
    assert current.user.get() is None


def test_tree_finds_live_instances(app):
    tree = app.extensions["core"].modules
    shops = tree.instances_of(Shop)
    assert [m.module_path for m in shops] == ["shop", "outlet", "index"]
    assert tree.path_of(tree["outlet"]) == "outlet"
    assert tree.path_of(Shop("outlet", "outlet")) is None, "a copy is not the live instance"
    assert "_tasks" in tree


def test_bad_mounts_raise():
    with pytest.raises(ValueError, match="invalid module path"):
        ModuleTree({"bad path!": Shop})
    with pytest.raises(TypeError, match="not a Module"):
        ModuleTree({"thing": object()})
    tree = ModuleTree({"a": Shop})
    with pytest.raises(ValueError, match="already mounted"):
        tree.mount("a", Shop)


def test_production_refuses_missing_secrets(settings):
    from core import create_app

    with pytest.raises(RuntimeError, match="TASKS_SECRET"):
        create_app({}, settings=settings.replace(runtime="appengine", tasks_secret=""))


class Clash(Module):
    @exposed
    def open(self, taskID=None, *args, **kwargs):  # noqa: N803 - as the task handler names it
        return {"taskID": taskID, "args": list(args)}

    @exposed
    def pair(self, first, second="b"):
        return {"first": first, "second": second}


def test_a_parameter_named_like_a_path_argument_does_not_collide(make_app):
    client = make_app({"clash": Clash}).test_client()
    assert client.get("/clash/open/x?taskID=y").json == {"taskID": "x", "args": []}
    assert client.post("/clash/open/x/z", data={"taskID": "y"}).json == {"taskID": "x", "args": ["z"]}
    assert client.get("/clash/open?taskID=y").json == {"taskID": "y", "args": []}
    assert client.get("/clash/pair/1?first=2&second=3").json == {"first": "1", "second": "3"}
    assert client.get("/clash/pair").status_code == 404  # a required argument is missing
    assert client.get("/clash/pair/1/2/3").status_code == 404  # one too many


def test_task_routes_with_colliding_parameters_answer_4xx(make_app):
    client = make_app().test_client()
    assert client.get("/_tasks/cron/default?cronName=x").status_code in (401, 403)
    assert client.get("/_tasks/execute/generate_invoices?taskID=x").status_code == 401
    assert client.post("/_tasks/execute/generate_invoices", data={"taskID": "x"}).status_code == 401
    assert client.get("/_tasks/admin/failed/1?letter_id=2").status_code == 401
    assert client.get("/_tasks/admin/queryiters/a?run_id=b").status_code == 401
