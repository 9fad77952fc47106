"""The local stack's choice of server: gunicorn or granian, from an argument or TASKS_SERVER."""
from __future__ import annotations

import argparse

import pytest

from core.devserver.servers import add_server_argument, server_command, server_from_env
from core.devserver.stack import LocalStack


def test_the_server_comes_from_tasks_server_and_defaults_to_gunicorn():
    assert server_from_env({}) == "gunicorn"
    assert server_from_env({"TASKS_SERVER": " Granian "}) == "granian"


def test_an_unknown_server_is_refused_naming_the_setting_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown server 'uwsgi' \(TASKS_SERVER / --server\): .*gunicorn, granian"):
        server_from_env({"TASKS_SERVER": "uwsgi"})
    with pytest.raises(ValueError, match="unknown server 'nginx'"):
        LocalStack(data_dir=tmp_path, root=tmp_path, port=1, server="nginx").start_server()


def test_the_flag_offers_both_servers_and_leaves_the_default_to_the_environment():
    parser = argparse.ArgumentParser()
    add_server_argument(parser)
    assert parser.parse_args([]).server is None
    assert parser.parse_args(["--server", "granian"]).server == "granian"
    with pytest.raises(SystemExit):
        parser.parse_args(["--server", "uwsgi"])


def test_granian_respawns_dead_workers_and_serves_wsgi_with_the_stacks_threads():
    command = server_command("granian", app_module="main:app", port=8123, workers=2, threads=8)
    assert command[1:3] == ["-m", "granian"] and command[-1] == "main:app"
    assert "--respawn-failed-workers" in command
    for flag, value in (("--interface", "wsgi"), ("--port", "8123"), ("--workers", "2"), ("--blocking-threads", "8")):
        assert command[command.index(flag) + 1] == value


def test_an_app_factory_is_named_as_each_server_wants_it():
    assert server_command("gunicorn", app_module="myapp:create_app()", port=1, workers=1, threads=1)[-1] == \
        "myapp:create_app()"
    granian = server_command("granian", app_module="myapp:create_app()", port=1, workers=1, threads=1)
    assert granian[-2:] == ["--factory", "myapp:create_app"]


def test_granian_workers_are_threaded_whatever_the_gunicorn_worker_class(tmp_path):
    stack = LocalStack(data_dir=tmp_path, root=tmp_path, port=1, server="granian", workers=2, worker_class="sync",
                       threads=8)
    assert stack.app_slots == 16
