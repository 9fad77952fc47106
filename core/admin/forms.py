"""Forms of the admin pages, and how a callable task's form becomes the data of its run.

Every state-changing admin request goes through a Flask-WTF form, so each one is checked for its
CSRF token on its own; no app-wide ``CSRFProtect`` is needed, and the signed task routes
(``/_tasks/deferred``, ``/_tasks/queryIter``, ``/_tasks/cron/*``) are untouched by it.
"""
from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import Field, PasswordField, SubmitField

from core.tasks.callable import summarize

CSRF_FIELD = "csrf_token"


class ActionForm(FlaskForm):
    """A button with nothing but a CSRF token: run a task without input, retry, discard, stop."""


def build_form(skel: Any) -> FlaskForm:
    """The form a task's ``dataSkel()`` declares (a ``FlaskForm`` class or instance), or an ActionForm."""
    if skel is None:
        return ActionForm()
    if isinstance(skel, type) and issubclass(skel, FlaskForm):
        return skel()
    if isinstance(skel, FlaskForm):
        return skel
    raise TypeError(f"dataSkel() must return a FlaskForm subclass or None, not {skel!r}")


def csrf_failed(form: FlaskForm) -> bool:
    """After ``validate()``: was the CSRF token missing, expired or wrong?"""
    return CSRF_FIELD in form.errors


def input_fields(form: FlaskForm) -> list[Field]:
    """The fields a person fills in (no CSRF token, no submit buttons)."""
    return [f for f in form if f.name != CSRF_FIELD and not isinstance(f, SubmitField)]


def form_data(form: FlaskForm) -> dict[str, Any]:
    """The validated values, by field name: the keyword arguments of ``execute()``."""
    return {field.name: field.data for field in input_fields(form)}


def data_summary(form: FlaskForm) -> str:
    """A short summary of the input for the run record; passwords are masked."""
    return summarize({field.name: "***" if isinstance(field, PasswordField) else field.data
                      for field in input_fields(form)})


def describe_fields(form: FlaskForm) -> list[dict[str, Any]]:
    """The fields as JSON for admin clients: name, label, type, required, choices, errors."""
    described = []
    for field in input_fields(form):
        entry: dict[str, Any] = {"name": field.name, "label": str(field.label.text), "type": field.type,
                                 "required": bool(field.flags.required), "description": field.description or "",
                                 "default": field.default if not callable(field.default) else None,
                                 "errors": list(field.errors)}
        choices = getattr(field, "choices", None)
        if choices is not None:
            entry["choices"] = [list(choice)[:2] if isinstance(choice, (list, tuple)) else [choice, choice]
                                for choice in choices]
        described.append(entry)
    return described


def field_errors(form: FlaskForm) -> dict[str, list[str]]:
    """Validation errors by field name (CSRF excluded)."""
    return {name: [str(e) for e in errors] for name, errors in form.errors.items() if name != CSRF_FIELD}
