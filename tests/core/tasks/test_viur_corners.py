"""ViUR's corners: geo points in deferred calls, retry_n_times' give-up mail, adminInfo, decorator order."""
from __future__ import annotations

from typing import Any

import jinja2
import pytest
from google.cloud.datastore.helpers import GeoPoint

from core import db
from core.tasks import TaskHandler, callDeferred, retry_n_times
from core.tasks.errors import UnsupportedTargetError
from core.tasks.executor import DEAD_LETTER_KIND

CALLS: list[Any] = []
MAILS: list[dict[str, Any]] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()
    MAILS.clear()


def mail_with_recipients(subject: str, text: str, recipients: list[str] | None = None) -> None:
    MAILS.append({"subject": subject, "text": text, "recipients": recipients})


def mail_to_admin(subject: str, text: str) -> None:
    MAILS.append({"subject": subject, "text": text})


@callDeferred
def locate(shop: db.Entity, where: Any) -> None:
    CALLS.append((shop, where))


@retry_n_times(2, email_recipients=["ops@example.com", "dev@example.com"])
@callDeferred
def gives_up(token: str) -> None:
    CALLS.append(token)
    raise OSError(f"no luck for {token}")


@callDeferred
@retry_n_times(0, email_recipients="ops@example.com", tpl="give_up.txt")
def gives_up_templated(token: str) -> None:
    CALLS.append(token)
    raise OSError("broken")


@pytest.fixture
def app(make_app):
    app = make_app({}, admin_mail=mail_with_recipients)
    app.jinja_env.loader = jinja2.DictLoader(
        {"give_up.txt": "{{ func_qualname }} gave up after {{ retries }} retries: {{ signature }}"})
    return app


def test_an_entity_with_a_geo_property_is_deferred_and_comes_back_equal(app, task_queue):
    shop = db.Entity(db.key("shop", "berlin"))
    shop["where"] = GeoPoint(52.52, 13.405)
    with app.test_request_context():
        locate(shop, GeoPoint(-33.9, 151.2))
    task_queue.run_pending()
    ((back, where),) = CALLS
    assert back == shop and type(back["where"]) is GeoPoint and where == GeoPoint(-33.9, 151.2)


def test_retry_n_times_mails_its_recipients_once_when_the_task_gives_up(app, task_queue):
    with app.test_request_context():
        gives_up("t1")
    task_queue.run_pending(max_attempts=10, raise_errors=False)
    assert CALLS == ["t1"] * 3  # the first run and two retries
    (mail,) = MAILS
    assert mail["recipients"] == ["ops@example.com", "dev@example.com"]
    assert "gives_up" in mail["subject"] and "'t1'" in mail["text"] and "OSError: no luck for t1" in mail["text"]
    (letter,) = db.Query(DEAD_LETTER_KIND).run()
    assert "last allowed execution" in letter["error"]


def test_retry_n_times_renders_its_template_and_a_hook_without_recipients_still_hears(make_app):
    app = make_app({}, admin_mail=mail_to_admin)
    app.jinja_env.loader = jinja2.DictLoader({"give_up.txt": "{{ func_qualname }} gave up after {{ retries }} "
                                                             "retries: {{ signature }}"})
    from core.testing import TaskQueue

    queue = TaskQueue(app)
    with app.test_request_context():
        gives_up_templated("t2")
    queue.run_pending(max_attempts=10, raise_errors=False)
    assert CALLS == ["t2"]
    (mail,) = MAILS
    assert mail["text"] == "For ops@example.com:\n\ngives_up_templated gave up after 0 retries: 't2'"


@pytest.mark.parametrize("recipients, tpl", [(["not an address"], None), ([1], None), ("ops@example.com", ""),
                                             (None, 5)])
def test_retry_n_times_refuses_impossible_mail_arguments_at_declaration(recipients, tpl):
    with pytest.raises(ValueError, match="retry_n_times"):
        retry_n_times(1, email_recipients=recipients, tpl=tpl)


def test_the_task_handler_has_viurs_admin_info():
    assert "adminInfo" in vars(TaskHandler) and TaskHandler.adminInfo is None


class Shops:
    @classmethod
    @callDeferred
    def reindex(cls, region: str) -> None: ...


def test_classmethod_above_call_deferred_is_refused_with_the_fix_in_the_message(app):
    with pytest.raises(UnsupportedTargetError, match="write @callDeferred above @classmethod"):
        Shops.reindex("eu")
