"""What every admin page shares: who may see it, HTML or JSON, error pages, the template set.

Templates live next to this file and are rendered by an overlay of the app's own Jinja
environment (so ``url_for`` and flashed messages work) that only this package uses: the pages
need no blueprint and no change to the app factory. An app's own pages may share the look: pass
their template folder as ``search_path`` to :func:`render` and extend ``base.html``.
"""
from __future__ import annotations

import datetime
import functools
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from flask import Response, current_app, jsonify, request
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape

from core import current
from core.admin.records import format_duration
from core.clock import utc_now
from core.module import Module
from core.reprs import safe_repr, too_long_for_text
from core.tasks.errors import Forbidden, NotAuthenticated, RequestError
from core.tasks.runtime import TaskRuntime, get_runtime

TEMPLATES = Path(__file__).resolve().parent / "templates"
_ENV_KEY = "core.admin.jinja"

F = TypeVar("F", bound=Callable[..., Any])


class Dashboard(Module):
    """Base of the task dashboard module (``TaskAdmin``): every page links to where the app mounts it."""


def wants_json(path_args: tuple[str, ...] = ()) -> bool:
    """JSON when asked for: a trailing ``json`` path segment, ``?format=json`` or ``Accept``."""
    if path_args and path_args[-1] == "json":
        return True
    if request.args.get("format") == "json":
        return True
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


def user_id() -> str | None:
    """The current user's id as the app's user provider gives it."""
    user = current.user.get()
    return get_runtime().users.id_of(user) if user is not None else None


def is_admin() -> bool:
    """The documented admin check: ``runtime.users.is_admin(current.user.get())``."""
    user = current.user.get()
    return user is not None and bool(get_runtime().users.is_admin(user))


def require_user() -> Any:
    """The signed-in user, or :class:`NotAuthenticated` (401)."""
    user = current.user.get()
    if user is None:
        raise NotAuthenticated("sign in to use this page")
    return user


def require_admin() -> TaskRuntime:
    """401 for anonymous visitors, 403 for users who are not admins; the runtime otherwise."""
    require_user()
    if not is_admin():
        raise Forbidden("only administrators may see the task dashboard")
    return get_runtime()


def dashboard_path() -> str | None:
    """Where the task dashboard is mounted in this app, if it is."""
    modules = get_runtime().modules
    found = modules.instances_of(Dashboard) if modules is not None else []
    return "/" + found[0].module_path if found else None


def login_url() -> str | None:
    """The sign-in page, if the app's user provider names one (``login_url`` attribute)."""
    url = getattr(get_runtime().users, "login_url", None)
    if not isinstance(url, str) or not url:
        return None
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urllib.parse.urlencode({'next': request.full_path.rstrip('?')}, safe='/')}"


def logout_url() -> str | None:
    """The sign-out page (POST with a CSRF token), if the app's user provider names one (``logout_url``)."""
    url = getattr(get_runtime().users, "logout_url", None)
    return url if isinstance(url, str) and url else None


def _environment(search_path: tuple[Path, ...] = ()) -> jinja2.Environment:
    """This package's templates, after those of ``search_path`` (an app's pages extending ``base.html``)."""
    envs = current_app.extensions.setdefault(_ENV_KEY, {})
    env = envs.get(search_path)
    if env is None:
        loader = jinja2.FileSystemLoader([str(path) for path in search_path] + [str(TEMPLATES)])
        env = current_app.jinja_env.overlay(loader=loader)
        env.filters["when"] = format_time
        env.filters["ago"] = format_age
        env.filters["due"] = format_due
        env.filters["sentence"] = sentence
        env.filters["breakable"] = breakable
        env.filters["duration"] = format_duration
        envs[search_path] = env
    return env


def page_context() -> dict[str, Any]:
    """What ``base.html`` needs: who is signed in, where to sign in and out, the app's home."""
    return {"user": current.user.get(), "user_id": user_id(), "is_admin": is_admin(),
            "dashboard": dashboard_path(), "login_url": login_url(), "logout_url": logout_url(),
            "home_url": get_runtime().settings.tasks_home_url, "page_csrf_token": generate_csrf, "request": request}


def render(template: str, http_status: int = 200, /, *, search_path: tuple[Path, ...] = (),
           **context: Any) -> Response:
    """An HTML page from this package's templates (or ``search_path``'s), with the page chrome filled in."""
    html = _environment(search_path).get_template(template).render({**page_context(), **context})
    return Response(html, status=http_status, mimetype="text/html")


def respond(template: str, data: Mapping[str, Any], http_status: int = 200, /, *,
            path_args: tuple[str, ...] = (), **context: Any) -> Response:
    """``data`` as JSON when the client asks for JSON, else the template rendered with it."""
    if wants_json(path_args):
        response = jsonify(to_json(dict(data)))
        response.status_code = http_status
        return response
    return render(template, http_status, **data, **context)


def error_response(status: int, message: str, *, path_args: tuple[str, ...] = ()) -> Response:
    """An error as JSON ``{"error": ...}`` or as a page."""
    titles = {400: "Bad request", 401: "Sign in required", 403: "Not allowed", 404: "Not found",
              422: "Invalid input"}
    return respond("error.html", {"error": message, "status": status}, status, path_args=path_args,
                   title=titles.get(status, "Error"))


def guarded(func: F) -> F:
    """Turn the task module's request errors (401/403/404/...) raised by a view into error pages."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RequestError as exc:
            return error_response(exc.http_status, str(exc))
    return wrapper  # type: ignore[return-value]


def to_json(value: Any) -> Any:
    """Plain JSON for entities, keys and datetimes (ISO 8601) found in page data."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool) and too_long_for_text(value):
        return safe_repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def format_time(value: Any) -> str:
    """``2026-10-05 14:03:12 UTC`` for datetimes and unix seconds; ``—`` for nothing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)):
        value = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def breakable(name: Any) -> Markup:
    """A dotted name (``module.Class.method``) that may wrap after its dots in a narrow column."""
    return Markup(".<wbr>").join(escape(part) for part in str(name).split("."))


def sentence(text: Any) -> str:
    """A message as a sentence: capital first letter, final full stop."""
    text = str(text or "").strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def format_age(value: Any) -> str:
    """A short relative time (``12 s ago``, ``in 3 min``) for a datetime."""
    if not isinstance(value, datetime.datetime):
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    seconds = (utc_now() - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600), (float("inf"), "d", 86400)):
        if seconds < limit:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return ""


def format_due(value: Any) -> str:
    """When something is next due: ``in 3 min``, or ``due now`` once that time has come."""
    if not isinstance(value, datetime.datetime):
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return format_age(value) if value > utc_now() else "due now"
