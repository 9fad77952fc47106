"""The queue's headers read into TaskInfo: App Engine, Cloud Tasks, the emulator, malformed numbers."""
from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest

from core.tasks.auth.queue_headers import TaskInfo, task_info
from core.tasks.errors import BadTaskRequest, http_status_for
from tests.core.tasks.auth.support import (
    environ_headers,
)

APPENGINE_HEADERS = {
    "X-AppEngine-QueueName": "default",
    "X-AppEngine-TaskName": "task-123",
    "X-AppEngine-TaskRetryCount": "4",
    "X-AppEngine-TaskExecutionCount": "3",
    "X-AppEngine-TaskETA": "1700000000.250000",
    "X-AppEngine-TaskPreviousResponse": "500",
    "X-AppEngine-TaskRetryReason": "App Engine returned 500",
}
EXPECTED_INFO = TaskInfo(
    queue="default", task_name="task-123", retry_count=4, execution_count=3,
    eta=1_700_000_000.25, previous_response=500, retry_reason="App Engine returned 500",
)


@pytest.mark.parametrize(
    "make",
    [
        dict,
        lambda h: {k.lower(): v for k, v in h.items()},
        lambda h: {k.upper(): v for k, v in h.items()},
        environ_headers,
    ],
    ids=["dict", "lower", "upper", "werkzeug"],
)
def test_task_info_from_appengine_headers(make: Callable[[dict[str, str]], Any]) -> None:
    info = task_info(make(APPENGINE_HEADERS))
    assert info == EXPECTED_INFO
    assert info.eta_datetime == datetime.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=datetime.UTC)


def test_task_info_from_cloudtasks_headers() -> None:
    headers = {key.replace("X-AppEngine-", "X-CloudTasks-"): value for key, value in APPENGINE_HEADERS.items()}
    assert task_info(headers) == EXPECTED_INFO


def test_task_info_from_the_emulator() -> None:
    # What gcloud-tasks-emulator sends: full queue path, counts, an empty ETA.
    info = task_info({
        "X-Appengine-Queuename": "projects/local-project/locations/europe-west1/queues/mail-out",
        "X-Appengine-Taskname": "1234567890",
        "X-Appengine-Taskretrycount": "0",
        "X-Appengine-Taskexecutioncount": "0",
        "X-Appengine-Tasketa": "",
    })
    assert info == TaskInfo(queue="mail-out", task_name="1234567890")
    assert info.eta is None and info.eta_datetime is None
    full_task = task_info({"X-CloudTasks-TaskName": "projects/p/locations/l/queues/q/tasks/abc"})
    assert full_task.task_name == "abc"


def test_task_info_without_headers() -> None:
    info = task_info({})
    assert info == TaskInfo()
    assert (info.queue, info.retry_count, info.execution_count) == (None, 0, 0)


def test_missing_execution_count_derives_from_retry_count() -> None:
    assert task_info({"X-AppEngine-TaskRetryCount": "7"}).execution_count == 7
    assert task_info({"X-CloudTasks-TaskRetryCount": "2"}).execution_count == 2
    assert task_info({"X-AppEngine-TaskExecutionCount": "1"}).retry_count == 0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-AppEngine-TaskRetryCount", "-1"),
        ("X-AppEngine-TaskExecutionCount", "-1"),
        ("X-AppEngine-TaskExecutionCount", "three"),
        ("X-CloudTasks-TaskExecutionCount", "1.5"),
        ("X-AppEngine-TaskRetryCount", "9" * 5000),
        ("X-AppEngine-TaskETA", "tomorrow"),
        ("X-AppEngine-TaskETA", "nan"),
        ("X-AppEngine-TaskETA", "-5"),
        ("X-AppEngine-TaskPreviousResponse", "5xx"),
    ],
)
def test_malformed_queue_numbers(header: str, value: str) -> None:
    with pytest.raises(BadTaskRequest, match=header) as info:
        task_info({header: value})
    assert http_status_for(info.value) == 400
