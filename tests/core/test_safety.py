"""Request size limit and security headers, on every route of the app."""
from __future__ import annotations

from core.config import Settings


def test_the_default_limit_is_just_above_the_payload_limit():
    assert Settings.from_env({}).request_size_limit == 100_000 + 65_536
    assert Settings.from_env({"TASKS_PAYLOAD_LIMIT": "1000"}).request_size_limit == 1000 + 65_536
    assert Settings.from_env({"REQUEST_SIZE_LIMIT": "5000"}).request_size_limit == 5000


def test_bodies_over_the_limit_are_refused_with_413(make_app, settings):
    app = make_app(settings=settings.replace(max_request_bytes=1000))
    client = app.test_client()
    for path in ("/_tasks/deferred", "/_tasks/queryIter", "/_tasks/execute/x", "/_tasks/admin/failed/1/retry"):
        assert client.post(path, data=b"x" * 1001).status_code == 413, path
    assert client.post("/_tasks/deferred", data=b"x" * 1000).status_code == 403  # unsigned, read and refused


def test_every_response_refuses_framing(client):
    for path in ("/_tasks/list", "/_tasks/admin", "/no/such/page"):
        response = client.get(path)
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_header_the_view_set_itself_is_kept(make_app):
    app = make_app()

    @app.get("/framed")
    def framed():
        return "ok", 200, {"x-frame-options": "SAMEORIGIN", "Referrer-Policy": "no-referrer"}

    response = app.test_client().get("/framed")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers.getlist("Referrer-Policy") == ["no-referrer"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
