"""The README as a user reads it: one configuration table naming every setting, test snippets that run."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from core.users import UserProvider
from tests.docs.readme import CHECKOUT, code_blocks, section, setting_names


def test_the_configuration_table_is_one_table_naming_every_setting():
    lines = section("Configuration").splitlines()
    rows = [index for index, line in enumerate(lines) if line.startswith("|")]
    assert rows, "no table under Configuration"
    assert rows == list(range(rows[0], rows[-1] + 1)), "the table is broken by a line that is not a row"
    table = lines[rows[0]:rows[-1] + 1]
    assert re.fullmatch(r"\|( --- \|)+", table[1]), table[1]
    assert all(row.count("|") - row.count("\\|") == table[0].count("|") for row in table), "a row has more cells"
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(table)))
    assert setting_names() - named == set()


def test_the_test_section_runs_as_written_in_a_users_project(tmp_path):
    (app_code,) = [block for block in code_blocks(section("Add it to your Flask app"), "python")
                   if "Flask(__name__)" in block]
    tests = section("Test your tasks")
    (ini,) = code_blocks(tests, "ini")
    snippets = code_blocks(tests, "python")
    assert snippets
    (tmp_path / "myapp.py").write_text(app_code)
    (tmp_path / "pytest.ini").write_text(ini)
    (tmp_path / "tests").mkdir()
    for index, snippet in enumerate(snippets):
        (tmp_path / "tests" / f"test_readme_{index}.py").write_text(snippet)
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}  # the package as if installed; no plugin entry point
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "core.testing", "-p", "no:cacheprovider", "-q"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    defined = sum(len(re.findall(r"^def test_", snippet, re.MULTILINE)) for snippet in snippets)
    assert f"{defined} passed" in result.stdout


def test_the_user_provider_shown_has_the_four_methods():
    (provider,) = [block for block in code_blocks(section("Add it to your Flask app"), "python")
                   if "class SessionUsers" in block]
    namespace: dict[str, object] = {}
    exec(provider.split("\ntasks = Tasks(")[0], namespace)  # the provider, without attaching it to an app
    users = namespace["SessionUsers"]()
    assert isinstance(users, UserProvider)
    assert users.is_admin("ada") and not users.is_admin("bob")
    assert users.load_by_id(users.id_of("ada")) == "ada"
