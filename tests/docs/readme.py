"""The README read as data: its sections, their code blocks and tables, and the settings config.py reads."""
from __future__ import annotations

import re
from pathlib import Path

from core.config import SOURCES

CHECKOUT = Path(__file__).resolve().parents[2]
README = CHECKOUT / "README.md"


def section(title: str, level: int = 2) -> str:
    """The text under the heading ``title`` (``## title``), up to the next heading of that level or higher.

    Lines inside fenced code blocks are never headings (a shell comment starts with ``#`` too).
    """
    lines: list[str] | None = None
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines(keepends=True):
        heading = re.match(r"(#+) ", line) if not fenced else None
        if line.startswith("```"):
            fenced = not fenced
        if heading and lines is not None and len(heading.group(1)) <= level:
            break
        if lines is not None:
            lines.append(line)
        elif heading and len(heading.group(1)) == level and line[level + 1:].strip() == title:
            lines = []
    assert lines is not None, f"README has no section {'#' * level} {title}"
    return "".join(lines)


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` in ``text``, in order."""
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def setting_names() -> set[str]:
    """Every environment variable ``core/config.py`` reads: its table of settings, and the platform's."""
    source = (CHECKOUT / "core" / "config.py").read_text(encoding="utf-8")
    platform = set(re.findall(r"""env(?:iron)?(?:\.get\(|\[)["']([A-Z][A-Z0-9_]+)["']""", source))
    return platform | {name for setting in SOURCES for name in setting.env}
