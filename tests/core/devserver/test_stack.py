"""The local stack's own choices: how many connections its dispatcher may open."""
from __future__ import annotations

from core.devserver.stack import LocalStack


def limit_of(command: list[str]) -> str:
    return command[command.index("--max-connections") + 1]


def test_the_dispatcher_opens_no_more_connections_than_the_app_serves_at_once(tmp_path):
    threaded = LocalStack(data_dir=tmp_path, root=tmp_path, workers=2, worker_class="gthread", threads=8, port=1)
    assert threaded.app_slots == 16 and limit_of(threaded.dispatcher_command()) == "16"
    sync = LocalStack(data_dir=tmp_path, root=tmp_path, workers=3, worker_class="sync", threads=8, port=1)
    assert limit_of(sync.dispatcher_command()) == "3"


def test_a_limit_given_to_the_dispatcher_is_its_own(tmp_path):
    stack = LocalStack(data_dir=tmp_path, root=tmp_path, port=1,
                       dispatcher_args=("--no-rate-limits", "--max-connections", "64"))
    command = stack.dispatcher_command()
    assert command.count("--max-connections") == 1 and limit_of(command) == "64"
