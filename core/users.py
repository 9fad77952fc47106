"""Pluggable user resolution: the core never assumes a login system.

An app passes a :class:`UserProvider` to ``create_app``. The web layer asks it for the user of a
request; the task layer stores the user's id with each deferred call and asks the provider to
reload the user when the task runs (so a task never acts on a stale copy of the user).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class UserProvider(Protocol):
    def load_from_request(self, request: Any) -> Any | None:
        """The signed-in user of a Flask request, or ``None``."""
        ...

    def load_by_id(self, user_id: str) -> Any | None:
        """Reload a user from the id :meth:`id_of` returned; ``None`` if it no longer exists."""
        ...

    def id_of(self, user: Any) -> str | None:
        """A stable string id for ``user``."""
        ...

    def is_admin(self, user: Any) -> bool:
        """May this user see the task admin pages?"""
        ...


class AnonymousUsers:
    """The default provider: nobody is signed in."""

    def load_from_request(self, request: Any) -> Any | None:
        return None

    def load_by_id(self, user_id: str) -> Any | None:
        return None

    def id_of(self, user: Any) -> str | None:
        return None

    def is_admin(self, user: Any) -> bool:
        return False
