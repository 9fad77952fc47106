"""Example users: kept in Datastore (kind ``user``), passwords hashed, signed in by session.

Only the example app knows about this; the core asks a :class:`core.users.UserProvider`.
"""
from __future__ import annotations

from typing import Any

from flask import redirect, request, session
from werkzeug.security import check_password_hash, generate_password_hash

from core import db
from core.module import Module, exposed

USER_KIND = "user"


def create_user(name: str, password: str, *, admin: bool = False) -> db.Entity:
    """Create or replace a user; the password is stored hashed."""
    entity = db.Entity(db.key(USER_KIND, name), exclude_from_indexes=("password_hash",))
    entity.update({"name": name, "password_hash": generate_password_hash(password), "admin": admin})
    db.put(entity)
    return entity


class SessionUsers:
    """The example's user provider: the user id is the ``user`` entity's key name."""

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
                return redirect(next if next.startswith("/") else "/")
            return LOGIN_FORM.format(error="<p class=error>Wrong name or password.</p>", next=next), 401
        return LOGIN_FORM.format(error="", next=next)

    @exposed
    def logout(self) -> Any:
        session.clear()
        return redirect("/")


LOGIN_FORM = """<!doctype html><title>Sign in</title>
<h1>Sign in</h1>{error}
<form method=post><input type=hidden name=next value="{next}">
<label>Name <input name=name autocomplete=username></label>
<label>Password <input name=password type=password autocomplete=current-password></label>
<button type=submit>Sign in</button></form>"""
