"""Priorities map deferred functions to queues; tags and descriptions travel in the payload."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import json as tagged_json
from core.config import DEFAULT_PRIORITY_QUEUES, Settings, parse_priority_queues
from core.tasks import callDeferred
from core.tasks.errors import ConfigurationError
from core.tasks.queues import load_queue_config

RUNS: list[str] = []


@callDeferred(priority="high", tags=("billing", "urgent"), description="Charge a card now")
def urgent() -> None:
    RUNS.append("urgent")


@callDeferred(priority="normal")
def ordinary() -> None:
    RUNS.append("ordinary")


@callDeferred(priority="low", description="Rebuild a report nobody waits for")
def bulk() -> None:
    RUNS.append("bulk")


@callDeferred
def untagged() -> None:
    RUNS.append("untagged")


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def _payload(task) -> dict:
    return tagged_json.loads(task.request.body)["payload"]


def test_priorities_go_to_their_queues_and_run(app, task_queue):
    assert urgent().queue == "high"
    assert ordinary().queue == "default"
    assert bulk().queue == "low"
    assert bulk(_queue="background").queue == "background", "the call's _queue wins"
    assert [t.request.queue for t in task_queue.pending] == ["high", "default", "low", "background"]
    task_queue.run_pending()
    assert RUNS == ["urgent", "ordinary", "bulk", "bulk"]


def test_the_example_queue_yaml_defines_the_default_priority_queues():
    queues = load_queue_config(Path(__file__).resolve().parents[3] / "deploy" / "queue.yaml")
    for priority, queue in DEFAULT_PRIORITY_QUEUES:
        assert (queue or "default") in queues, priority
        assert queues[queue or "default"].retry.task_retry_limit is not None or queue is None


def test_the_mapping_is_a_setting(make_app, settings, tmp_path, task_queue):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: urgent\n- name: bulk-work\n")
    mapping = parse_priority_queues("high=urgent, low=bulk-work")
    assert dict(mapping) == {"high": "urgent", "normal": None, "low": "bulk-work"}
    make_app(settings=settings.replace(queue_yaml=queue_yaml, tasks_priority_queues=mapping))
    assert (urgent().queue, ordinary().queue, bulk().queue) == ("urgent", "default", "bulk-work")
    env = Settings.from_env({"TASKS_PRIORITY_QUEUES": "normal=middle"})
    assert dict(env.tasks_priority_queues) == {"high": "high", "normal": "middle", "low": "low"}
    assert Settings.from_env({}).tasks_priority_queues == DEFAULT_PRIORITY_QUEUES
    for bad in ("urgent=x", "high"):
        with pytest.raises(ValueError, match="TASKS_PRIORITY_QUEUES"):
            parse_priority_queues(bad)


def test_a_priority_whose_queue_is_missing_fails_at_the_call(make_app, settings, tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: low\n")
    app = make_app(settings=settings.replace(queue_yaml=queue_yaml))
    from tests.conftest import TaskQueue

    with pytest.raises(ConfigurationError, match=r"test_priority.urgent has priority 'high', which maps to "
                                                 r"queue 'high', but queue.yaml .* defines no such queue"):
        urgent()
    assert bulk().queue == "low"
    assert len(TaskQueue(app).pending) == 1


def test_tags_and_description_travel_in_the_payload(app, task_queue):
    urgent()
    bulk()
    untagged()
    first, second, third = (_payload(t) for t in task_queue.pending)
    assert first["tags"] == ["billing", "urgent"] and first["description"] == "Charge a card now"
    assert "tags" not in second and second["description"] == "Rebuild a report nobody waits for"
    assert "tags" not in third and "description" not in third


def test_bad_options_fail_at_decoration():
    def target():
        pass

    target.__qualname__ = "target"
    with pytest.raises(ConfigurationError, match="priority must be one of high, normal, low, got 'urgent'"):
        callDeferred(priority="urgent")(target)
    with pytest.raises(ConfigurationError, match="give queue= or priority=, not both"):
        callDeferred(queue="x", priority="high")(target)
    with pytest.raises(ConfigurationError, match="tags must be a tuple of strings"):
        callDeferred(tags="billing")(target)
    with pytest.raises(ConfigurationError, match="each tag must be a non-empty string"):
        callDeferred(tags=("ok", ""))(target)
    with pytest.raises(ConfigurationError, match="at most 20 tags"):
        callDeferred(tags=[f"t{i}" for i in range(21)])(target)
    with pytest.raises(ConfigurationError, match="description must be a string"):
        callDeferred(description=42)(target)
