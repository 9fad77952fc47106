"""The example's sign-in and sign-out: same-site redirects only, CSRF on both, sign-out by POST only."""
from __future__ import annotations

import re

import pytest
from flask import session

from example import MODULES, SessionUsers
from example.users import create_user, safe_next

EVIL = ["//evil.example/", "/\t/evil.example/", "/\\evil.example", "\\\\evil.example", " //evil.example",
        "/\n/evil.example", "/\r\n/evil.example", "https://evil.example/",
        "javascript:alert(1)", "evil.example", "", "/\x00/evil.example", "\x01//evil.example", "/" + "a" * 3000]


def token_of(client, path: str = "/user/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert match, f"{path} has no CSRF token"
    return match[1]


def sign_in(client, name: str, password: str, **data: str):
    """Sign in through the form, with the CSRF token the sign-in page gives."""
    return client.post("/user/login", data={"name": name, "password": password, "csrf_token": token_of(client),
                                            **data})


@pytest.fixture
def app(make_app):
    app = make_app(MODULES, users=SessionUsers())
    create_user("ada", "pw-ada-123")
    create_user("root", "pw-root-123", admin=True)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def signed_in_as(client) -> str | None:
    with client.session_transaction() as sess:
        return sess.get("user")


@pytest.mark.parametrize("target", EVIL)
def test_next_is_a_path_of_this_site_as_a_browser_reads_it(target):
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/_tasks/list", "/_tasks/execute/x?run=1&a=b", "/tour/watch/ab#top"])
def test_paths_of_this_site_are_kept(target):
    assert safe_next(target) == target


def test_a_tab_inside_the_path_is_dropped_as_a_browser_drops_it():
    assert safe_next("/_tasks/\tlist") == "/_tasks/list"


@pytest.mark.parametrize("target", ["/\t/evil.example/", "//evil.example/", "/\\evil.example", "/\n/x"])
def test_sign_in_never_redirects_off_the_site(client, target):
    response = sign_in(client, "ada", "pw-ada-123", next=target)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert signed_in_as(client) == "ada"


def test_sign_in_with_next_in_the_query_string_stays_on_the_site(client):
    token = token_of(client, "/user/login?next=/%09/evil.example/")
    response = client.post("/user/login?next=/%09/evil.example/",
                           data={"name": "ada", "password": "pw-ada-123", "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    page = client.get("/user/login?next=/%09/evil.example/").get_data(as_text=True)
    assert 'name="next" value="/"' in page  # the form never carries the hostile target on


def test_sign_in_sends_to_the_page_asked_for(client):
    response = sign_in(client, "ada", "pw-ada-123", next="/_tasks/list")
    assert response.status_code == 303 and response.headers["Location"] == "/_tasks/list"


@pytest.mark.parametrize("token", [None, "forged"])
def test_sign_in_without_the_csrf_token_is_refused(client, token):
    client.get("/user/login")
    data = {"name": "ada", "password": "pw-ada-123"}
    if token:
        data["csrf_token"] = token
    response = client.post("/user/login", data=data)
    assert response.status_code == 400 and "did not come from this site" in response.get_data(as_text=True)
    assert signed_in_as(client) is None


def test_wrong_password_is_401_and_the_form_again(client):
    response = sign_in(client, "ada", "nope")
    assert response.status_code == 401 and "Wrong name or password." in response.get_data(as_text=True)
    assert signed_in_as(client) is None


def test_sign_out_by_get_does_nothing(client):
    sign_in(client, "ada", "pw-ada-123")
    assert client.get("/user/logout").status_code == 405
    assert signed_in_as(client) == "ada"


@pytest.mark.parametrize("token", [None, "forged"])
def test_sign_out_without_the_csrf_token_is_refused(client, token):
    sign_in(client, "ada", "pw-ada-123")
    response = client.post("/user/logout", data={"csrf_token": token} if token else {})
    assert response.status_code == 400
    assert signed_in_as(client) == "ada"


@pytest.mark.parametrize("page", ["/", "/_tasks/list", "/_tasks/admin", "/_tasks/admin/periodic"])
def test_every_page_offers_sign_out_by_post_and_a_way_home(client, page):
    sign_in(client, "root", "pw-root-123")
    html = client.get(page).get_data(as_text=True)
    assert re.search(r'<form class="signout" method="post" action="/user/logout"><input type="hidden" '
                     r'name="csrf_token" value="[^"]+">', html)
    assert '<a class="brand home" href="/">Home</a>' in html and "Signed in as <b>root</b>" in html
    token = re.search(r'class="signout".*?name="csrf_token" value="([^"]+)"', html)[1]
    response = client.post("/user/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert signed_in_as(client) is None
    with client.application.test_request_context():
        assert "user" not in session
    assert "Sign in" in client.get("/").get_data(as_text=True)


def test_the_home_link_follows_the_setting(make_app, settings):
    app = make_app(MODULES, users=SessionUsers(), settings=settings.replace(tasks_home_url="/app/"))
    create_user("ada", "pw-ada-123")
    client = app.test_client()
    sign_in(client, "ada", "pw-ada-123")
    assert '<a class="brand home" href="/app/">Home</a>' in client.get("/_tasks/list").get_data(as_text=True)


def test_a_name_too_long_for_a_datastore_key_is_a_wrong_name(client):
    response = sign_in(client, "n" * 1600, "x")
    assert response.status_code == 401


def test_a_next_with_a_newline_never_reaches_a_header(client):
    response = sign_in(client, "ada", "pw-ada-123", next="/x\r\nSet-Cookie: a=b")
    assert response.status_code == 303
    location = response.headers["Location"]
    assert "\r" not in location and "\n" not in location and location.startswith("/") and not location.startswith("//")
    assert not any("a=b" in cookie for cookie in response.headers.getlist("Set-Cookie"))
