"""``core/`` passes mypy with the project's settings (pyproject.toml ``[tool.mypy]``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_nothing_in_core():
    result = subprocess.run([sys.executable, "-m", "mypy", "core"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
