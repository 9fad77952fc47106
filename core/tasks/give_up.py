"""The mail ``retry_n_times(n, email_recipients=..., tpl=...)`` sends when a task gives up, as ViUR does.

ViUR 3 mails the recipients once, when the last allowed execution has failed, with the function's
name, its call and the traceback. Here the mail goes through the app's ``admin_mail`` hook (given
to ``Tasks`` / ``create_app``), called as ``admin_mail(subject, text, recipients=[...])``; a hook
that takes no ``recipients`` gets ``admin_mail(subject, text)`` with the recipients named in the
text. ``tpl`` names a Jinja template of the app that renders the text instead of the default one;
it gets ViUR's variables (``func_name``, ``func_qualname``, ``func_module``, ``retries``, ``args``,
``kwargs``, ``signature``, ``traceback``). A failing hook or template is logged, never raised: the
task is given up either way.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from flask import current_app

from core.reprs import safe_repr

log = logging.getLogger(__name__)

_DEFAULT_TEXT = ("Task {qualname} failed {retries} time(s) after its first run; that was its last attempt.\n\n"
                 "{module}.{qualname}({signature})\n\n{traceback}")


@dataclasses.dataclass(frozen=True)
class GiveUpMail:
    """Who hears of a task that gives up, and the template of what they read."""

    recipients: tuple[str, ...]
    template: str | None = None

    @classmethod
    def build(cls, email_recipients: object, tpl: object) -> GiveUpMail | None:
        """Check ``retry_n_times``' ``email_recipients`` (an address or a list of them) and ``tpl``."""
        if tpl is not None and (not isinstance(tpl, str) or not tpl):
            raise ValueError(f"retry_n_times: tpl must be the name of a template, got {tpl!r}")
        if email_recipients is None or email_recipients == []:
            return None
        recipients = (email_recipients,) if isinstance(email_recipients, str) else email_recipients
        if not isinstance(recipients, (list, tuple)) or not all(isinstance(r, str) and "@" in r for r in recipients):
            raise ValueError(f"retry_n_times: email_recipients must be an address or a list of addresses, "
                             f"got {email_recipients!r}")
        return cls(tuple(recipients), tpl)

    def send(self, mail_hook: Callable[..., Any] | None, func: Callable[..., Any], retries: int,
             args: list[Any], kwargs: dict[str, Any], error: BaseException) -> None:
        """Tell the recipients that ``func`` gave up with ``error``; logs what it cannot do."""
        qualname = getattr(func, "__qualname__", repr(func))
        if mail_hook is None:
            log.error("%s gave up; no admin_mail hook is set, so %s were not told", qualname,
                      ", ".join(self.recipients))
            return
        signature = ", ".join([safe_repr(a) for a in args] + [f"{k}={safe_repr(v)}" for k, v in kwargs.items()])
        trace = "".join(traceback.format_exception(error))
        values = {"func_name": getattr(func, "__name__", qualname), "func_qualname": qualname,
                  "func_module": getattr(func, "__module__", ""), "retries": retries, "args": args,
                  "kwargs": kwargs, "signature": signature, "traceback": trace}
        subject = f"Task {qualname} failed {retries + 1} time(s) and was given up"
        try:
            if self.template is not None:
                text = current_app.jinja_env.get_template(self.template).render(**values)
            else:
                text = _DEFAULT_TEXT.format(qualname=qualname, retries=retries, module=values["func_module"],
                                            signature=signature, traceback=trace)
            if _takes_recipients(mail_hook):
                mail_hook(subject, text, recipients=list(self.recipients))
            else:
                mail_hook(subject, f"For {', '.join(self.recipients)}:\n\n{text}")
        except Exception:
            log.exception("the mail that %s gave up could not be sent to %s", qualname, ", ".join(self.recipients))


def _takes_recipients(hook: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "recipients" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
