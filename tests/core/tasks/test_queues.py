"""queue.yaml parsing, defaults, errors and the Cloud Tasks backoff sequence (no I/O but tmp files)."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from core.tasks.queues import (
    QueueConfig,
    RetryConfig,
    backoff_delay,
    load_queue_config,
    parse_age,
    parse_queue_config,
    parse_rate,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("500/s", 500.0), ("10/m", 10 / 60), ("1/h", 1 / 3600), ("1/d", 1 / 86400), ("2.5/s", 2.5),
     (" 5 / s ", 5.0), ("0/s", 0.0)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "5", "5/x", "/s", "five/s", "-1/s", "5/sec", "5/s/m"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2d", timedelta(days=2)), ("30m", timedelta(minutes=30)), ("1h", timedelta(hours=1)),
     ("10s", timedelta(seconds=10)), ("1h30m", timedelta(minutes=90)), ("0.5s", timedelta(milliseconds=500))],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "2", "d", "2w", "1h 30m", "-1s", "1.2.3s"])
def test_parse_age_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_age(text)


def test_empty_file_has_app_engine_default_queue() -> None:
    queues = parse_queue_config("")
    assert queues == {"default": QueueConfig(name="default")}
    default = queues["default"]
    assert (default.rate_per_second, default.bucket_size, default.max_concurrent_requests) == (5.0, 5, None)
    assert default.retry == RetryConfig(None, None, 0.1, 3600.0, 16)
    assert default.dispatch_deadline == timedelta(minutes=10)


def test_full_queue_definition() -> None:
    queues = parse_queue_config(
        """
total_storage_limit: 120M
queue:
- name: mail
  rate: 10/m
  bucket_size: 3
  max_concurrent_requests: 2
  target: worker
  dispatch_deadline: 90s
  retry_parameters:
    task_retry_limit: 7
    task_age_limit: 2d
    min_backoff_seconds: 10
    max_backoff_seconds: 200
    max_doublings: 2
- name: pulled
  mode: pull
"""
    )
    assert set(queues) == {"mail", "default"}  # pull queues need no dispatching; default is always there
    mail = queues["mail"]
    assert mail == QueueConfig(
        name="mail", rate_per_second=pytest.approx(1 / 6), bucket_size=3, max_concurrent_requests=2,
        retry=RetryConfig(7, timedelta(days=2), 10.0, 200.0, 2), target="worker",
        dispatch_deadline=timedelta(seconds=90),
    )
    assert mail.retry.max_attempts == 8
    assert RetryConfig().max_attempts is None


def test_defined_default_queue_is_kept() -> None:
    queues = parse_queue_config("queue:\n- name: default\n  rate: 1/s\n")
    assert queues["default"].rate_per_second == 1.0
    assert queues["default"].bucket_size == 5


def test_zero_rate_pauses() -> None:
    assert parse_queue_config("queue:\n- name: held\n  rate: 0/s\n")["held"].paused


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("queue:\n- name: q\n  rate: fast\n", ["'q'", "rate"]),
        ("queue:\n- name: q\n  bucket_size: 0\n", ["'q'", "bucket_size"]),
        ("queue:\n- name: q\n  bucket_size: 2.5\n", ["'q'", "bucket_size"]),
        ("queue:\n- name: q\n  max_concurrent_requests: -1\n", ["'q'", "max_concurrent_requests"]),
        ("queue:\n- name: q\n  retry_parameters:\n    task_retry_limit: -1\n", ["'q'", "task_retry_limit"]),
        ("queue:\n- name: q\n  retry_parameters:\n    task_age_limit: soon\n", ["'q'", "task_age_limit"]),
        ("queue:\n- name: q\n  retry_parameters:\n    min_backoff_seconds: -2\n", ["'q'", "min_backoff_seconds"]),
        ("queue:\n- name: q\n  retry_parameters:\n    max_doublings: x\n", ["'q'", "max_doublings"]),
        ("queue:\n- name: q\n  retry_parameters:\n    min_backoff_seconds: 10\n    max_backoff_seconds: 1\n",
         ["'q'", "max_backoff_seconds"]),
        ("queue:\n- name: q\n  retry_parameters:\n    retries: 3\n", ["'q'", "retries"]),
        ("queue:\n- name: q\n  colour: red\n", ["'q'", "colour"]),
        ("queue:\n- name: q\n  dispatch_deadline: 0s\n", ["'q'", "dispatch_deadline"]),
        ("queue:\n- name: q\n  mode: push-pull\n", ["'q'", "mode"]),
        ("queue:\n- name: q\n- name: q\n", ["'q'", "twice"]),
        ("queue:\n- name: bad_name\n", ["name"]),
        ("queue:\n- rate: 5/s\n", ["#1", "name"]),
        ("queue:\n- just-a-string\n", ["#1"]),
        ("queue: {name: q}\n", ["list"]),
        ("- name: q\n", ["mapping"]),
        ("queue: [\n", ["YAML"]),
    ],
)
def test_bad_input_names_queue_and_field(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_queue_config(text)
    for word in words:
        assert word in str(info.value)


def test_backoff_doubles_then_grows_linearly_then_caps() -> None:
    # The example of Cloud Tasks' RetryConfig documentation.
    retry = RetryConfig(min_backoff_seconds=10, max_backoff_seconds=300, max_doublings=3)
    assert [backoff_delay(retry, n) for n in range(1, 10)] == [10, 20, 40, 80, 160, 240, 300, 300, 300]


def test_backoff_with_app_engine_defaults() -> None:
    retry = RetryConfig()
    assert backoff_delay(retry, 1) == pytest.approx(0.1)
    assert backoff_delay(retry, 2) == pytest.approx(0.2)
    assert backoff_delay(retry, 10) == pytest.approx(0.1 * 2**9)
    assert backoff_delay(retry, 16) == pytest.approx(3276.8)
    assert backoff_delay(retry, 17) == 3600.0
    assert backoff_delay(retry, 10_000) == 3600.0


def test_backoff_without_doublings_is_linear_and_huge_doublings_do_not_overflow() -> None:
    linear = RetryConfig(min_backoff_seconds=2, max_backoff_seconds=100, max_doublings=0)
    assert [backoff_delay(linear, n) for n in range(1, 5)] == [2, 4, 6, 8]
    huge = RetryConfig(min_backoff_seconds=1, max_backoff_seconds=50, max_doublings=100_000)
    assert backoff_delay(huge, 5_000) == 50.0
    assert backoff_delay(RetryConfig(min_backoff_seconds=0, max_backoff_seconds=0), 3) == 0.0
    with pytest.raises(ValueError):
        backoff_delay(linear, 0)


def test_backoff_is_monotonic_and_bounded() -> None:
    retry = RetryConfig(min_backoff_seconds=0.5, max_backoff_seconds=60, max_doublings=4)
    delays = [backoff_delay(retry, n) for n in range(1, 50)]
    assert delays == sorted(delays)
    assert delays[0] == 0.5 and delays[-1] == 60.0


def test_load_missing_file_gives_default(tmp_path: Path) -> None:
    assert load_queue_config(tmp_path / "nowhere.yaml") == {"default": QueueConfig(name="default")}


def test_project_queue_yaml() -> None:
    queues = load_queue_config(REPO_ROOT / "deploy" / "queue.yaml")
    assert {"default", "background", "query-iter"} <= set(queues)
    default = queues["default"]
    assert default.rate_per_second == 500.0  # Cloud Tasks' maximum
    assert default.retry == RetryConfig(30, timedelta(days=1), 0.1, 3600.0, 16)
    for queue in queues.values():
        # Every queue gives up after a number of retries: its last attempt writes a dead letter.
        assert queue.retry.max_attempts is not None, f"{queue.name} would retry a failing task forever"
        assert 0 < queue.rate_per_second <= 500
        assert queue.max_concurrent_requests is not None
        assert timedelta(seconds=15) <= queue.dispatch_deadline <= timedelta(minutes=30)
    assert queues["background"].rate_per_second < default.rate_per_second
    assert queues["background"].retry.task_retry_limit is not None
