"""The local stack as ``python main.py`` runs it: processes that stay apart from other stacks."""
from __future__ import annotations

from pathlib import Path


def test_gunicorn_opens_no_control_socket_shared_with_other_stacks(make_stack, tmp_path):
    """gunicorn's control socket defaults to one path per user: parallel stacks would share it."""
    home = tmp_path / "home"
    home.mkdir()
    stack = make_stack(extra_env={"HOME": str(home), "XDG_RUNTIME_DIR": ""})
    assert stack.gunicorn is not None and stack.gunicorn.poll() is None
    assert not (home / ".gunicorn" / "gunicorn.ctl").exists()
    assert not list(Path(home).rglob("*.ctl"))
