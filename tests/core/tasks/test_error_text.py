"""Every record keeps an error's text the same way: ``Type: message``, cut to one length."""
from __future__ import annotations

from core.tasks.errors import MAX_ERROR_TEXT, error_text


def test_an_exception_reads_as_its_type_and_message() -> None:
    assert error_text(ValueError("bad month")) == "ValueError: bad month"
    assert error_text("stopped on request") == "stopped on request"


def test_long_texts_are_cut_and_say_so() -> None:
    text = error_text(RuntimeError("x" * 10_000))
    assert len(text) == MAX_ERROR_TEXT and text.startswith("RuntimeError: xxx") and text.endswith("…")
    exact = "y" * MAX_ERROR_TEXT
    assert error_text(exact) == exact
