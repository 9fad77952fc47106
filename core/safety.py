"""What every request and response of the app gets: a body size limit and the usual security headers.

- A request whose body is larger than ``REQUEST_SIZE_LIMIT`` is refused with 413 before any of it
  is read: at once when ``Content-Length`` says so, and as soon as the limit is passed for a chunked
  body (Werkzeug enforces ``MAX_CONTENT_LENGTH`` on streams the server terminates, as gunicorn's).
- Every response says it may not be framed (``X-Frame-Options``, CSP ``frame-ancestors``), not
  sniffed, and sends no referrer off the site: admin pages have buttons worth clickjacking.
"""
from __future__ import annotations

from flask import Flask, Request, Response, abort, current_app, request

from core.config import Settings

#: Headers every response carries unless the view set its own.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


LIMIT_KEY = "CORE_REQUEST_SIZE_LIMIT"
#: (lower-case name, name, value) of each security header, for one pass over a response's headers.
_HEADER_ITEMS = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS.items())


def read_body() -> bytes:
    """The request body, or 413 when it is longer than the limit (also a chunked one, read no further)."""
    data = request.get_data(cache=False)
    limit = current_app.config.get(LIMIT_KEY)
    if limit is not None and len(data) > limit:
        abort(413)
    return data


def init_app(app: Flask, settings: Settings) -> None:
    """Set the body size limit of ``app``; its request hooks call :func:`refuse_large_body` and :func:`secure`."""
    limit = settings.request_size_limit
    app.config[LIMIT_KEY] = limit
    # One byte more, so a read can tell a body of exactly the limit from a longer one.
    app.config["MAX_CONTENT_LENGTH"] = limit + 1


def refuse_large_body(req: Request, limit: int) -> None:
    """413 before anything else happens when the request says its body is longer than ``limit``."""
    length = req.content_length
    if length is not None and length > limit:
        abort(413)


def secure(response: Response) -> Response:
    """Add every security header the view did not set itself (one pass, no lookup per header)."""
    headers = response.headers
    present = {key.lower() for key in headers.keys()}
    missing = [(name, value) for lowered, name, value in _HEADER_ITEMS if lowered not in present]
    if missing:
        headers.extend(missing)
    return response
