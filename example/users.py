"""Example users: kept in Datastore (kind ``user``), passwords hashed, signed in by session.

Only the example app knows about this; the core asks a :class:`core.users.UserProvider`.

Locally (``python main.py``, Datastore emulator) the sign-in page creates two demo users the
first time it is shown, unless they exist: ``admin`` / ``admin-demo`` (an administrator) and
``user`` / ``user-demo`` (a plain user). Never outside the emulator. Other users:
``flask --app main users create NAME --admin`` (asks for the password).
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any

import click
from flask import abort, redirect, request, session
from flask.cli import AppGroup
from werkzeug.security import check_password_hash, generate_password_hash

from core import db, key_ids
from core.module import Module, exposed
from example.pages import csrf_ok, page

USER_KIND = "user"
#: Demo accounts for local use: (name, password, admin).
DEMO_USERS: tuple[tuple[str, str, bool], ...] = (("admin", "admin-demo", True), ("user", "user-demo", False))


def create_user(name: str, password: str, *, admin: bool = False) -> db.Entity:
    """Create or replace a user; the password is stored hashed."""
    entity = db.Entity(db.key(USER_KIND, name), exclude_from_indexes=("password_hash",))
    entity.update({"name": name, "password_hash": generate_password_hash(password), "admin": admin})
    db.put(entity)
    return entity


def demo_users_allowed() -> bool:
    """Demo users with published passwords exist only in local development on the emulator."""
    from core.tasks.runtime import get_runtime

    settings = get_runtime().settings
    return settings.runtime == "local" and bool(settings.datastore_emulator_host)


def seed_demo_users() -> list[str]:
    """Create the demo users that do not exist yet; returns the names created."""
    created = []
    for name, password, admin in DEMO_USERS:
        if db.get(db.key(USER_KIND, name)) is None:
            create_user(name, password, admin=admin)
            created.append(name)
    return created


class SessionUsers:
    """The example's user provider: the user id is the ``user`` entity's key name."""

    #: Where the task pages send anonymous visitors to sign in.
    login_url = "/user/login"
    #: Where the pages' sign-out button posts (with the CSRF token).
    logout_url = "/user/logout"

    def load_from_request(self, req: Any) -> db.Entity | None:
        name = session.get("user")
        return self.load_by_id(name) if name else None

    def load_by_id(self, user_id: str) -> db.Entity | None:
        return db.get(db.key(USER_KIND, user_id))

    def id_of(self, user: Any) -> str | None:
        return user.key.name if user is not None and user.key is not None else None

    def is_admin(self, user: Any) -> bool:
        return bool(user is not None and user.get("admin"))


class UserModule(Module):
    """``/user/login`` (a CSRF-checked form) and ``/user/logout`` (POST with the CSRF token only)."""

    @exposed
    def login(self, name: str = "", password: str = "", next: str = "/") -> Any:  # noqa: A002
        target = safe_next(next)
        if request.method == "POST":
            if not csrf_ok():
                return _login_page(target, "The form expired or did not come from this site. Please sign in again.",
                                   400)
            user = db.get(db.key(USER_KIND, name)) if _possible_name(name) else None
            if user is not None and check_password_hash(user["password_hash"], password):
                session.clear()
                session["user"] = name
                return redirect(target, code=303)
            return _login_page(target, "Wrong name or password.", 401)
        return _login_page(target)

    @exposed(methods=("POST",))
    def logout(self) -> Any:
        """Signs out only with the session's CSRF token: a link or an image elsewhere cannot."""
        if not csrf_ok():
            abort(400, "The sign-out form expired or did not come from this site.")
        session.clear()
        return redirect("/", code=303)


#: Characters browsers drop from a URL anywhere in it (tab, newline, carriage return).
_DROPPED = re.compile(r"[\t\n\r]")
#: Characters a browser strips from both ends of a URL (C0 controls and space).
_STRIPPED = "".join(chr(c) for c in range(0x21))


def safe_next(target: str) -> str:
    """``target`` if it is a path of this site, else ``/``.

    Checked as a browser will read it, not as it was sent: tabs and newlines are dropped, ends are
    trimmed and ``\\`` counts as ``/``, so ``/<tab>/evil.example`` is ``//evil.example`` (another host).
    The normalised form is what the redirect sends.
    """
    path = _DROPPED.sub("", str(target)).strip(_STRIPPED).replace("\\", "/")
    if len(path) > 2000 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "/"
    parts = urllib.parse.urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//"):
        return "/"
    return path


def _possible_name(name: str) -> bool:
    """Whether ``name`` can be a user's key name (a wrong one is a failed sign-in, not a 400)."""
    try:
        key_ids.key_id(name, what="user name")
    except key_ids.MalformedId:
        return False
    return True


def _login_page(next_path: str, error: str = "", http_status: int = 200) -> Any:
    demo = demo_users_allowed()
    if demo:
        seed_demo_users()
    return page("login.html", http_status, title="Sign in", error=error, next=next_path, demo=demo)


#: ``flask --app main users create NAME [--admin]`` and ``... users seed-demo`` once the app adds
#: this group to its CLI (``app.cli.add_command(users_cli)``).
users_cli = AppGroup("users", help="Manage the example's users.")


@users_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see the task dashboard and run admin-only tasks.")
@click.password_option(help="Asked for when not given.")
def create_command(name: str, admin: bool, password: str) -> None:
    """Create or replace the user NAME."""
    create_user(name, password, admin=admin)
    click.echo(f"user {name!r} saved{' (admin)' if admin else ''}")


@users_cli.command("seed-demo")
def seed_command() -> None:
    """Create the demo users admin/admin-demo and user/user-demo where missing."""
    created = seed_demo_users()
    click.echo(f"created: {', '.join(created)}" if created else "the demo users exist already")
