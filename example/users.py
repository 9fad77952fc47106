"""Example users: kept in Datastore (kind ``user``), passwords hashed, signed in by session.

Only the example app knows about this; the core asks a :class:`core.users.UserProvider`.

Locally (``python main.py``, Datastore emulator) the sign-in page creates two demo users the
first time it is shown, unless they exist: ``admin`` / ``admin-demo`` (an administrator) and
``user`` / ``user-demo`` (a plain user). Never outside the emulator. Other users:
``flask --app main users create NAME --admin`` (asks for the password).
"""
from __future__ import annotations

from typing import Any

import click
from flask import redirect, request, session
from flask.cli import AppGroup
from markupsafe import escape
from werkzeug.security import check_password_hash, generate_password_hash

from core import db
from core.module import Module, exposed

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
    """``/user/login`` and ``/user/logout``."""

    @exposed
    def login(self, name: str = "", password: str = "", next: str = "/") -> Any:  # noqa: A002
        if request.method == "POST":
            user = db.get(db.key(USER_KIND, name)) if name else None
            if user is not None and check_password_hash(user["password_hash"], password):
                session.clear()
                session["user"] = name
                # Only paths of this site: "//host" and "/\\host" would leave it.
                return redirect(next if next.startswith("/") and not next.startswith(("//", "/\\")) else "/")
            return _login_page(next, "<p class=error>Wrong name or password.</p>"), 401
        return _login_page(next)

    @exposed
    def logout(self) -> Any:
        session.clear()
        return redirect("/")


def _login_page(next_path: str, error: str = "") -> str:
    demo = ""
    if demo_users_allowed():
        seed_demo_users()
        demo = DEMO_NOTE
    return LOGIN_FORM.format(error=error, next=escape(next_path), demo=demo)


DEMO_NOTE = ("<p>Demo accounts (local only): <b>admin</b> / <code>admin-demo</code> (administrator), "
             "<b>user</b> / <code>user-demo</code>.</p>")

LOGIN_FORM = """<!doctype html><title>Sign in</title>
<h1>Sign in</h1>{error}{demo}
<form method=post><input type=hidden name=next value="{next}">
<label>Name <input name=name autocomplete=username></label>
<label>Password <input name=password type=password autocomplete=current-password></label>
<button type=submit>Sign in</button></form>"""


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
