"""The deploy files validate and the README's deploy commands agree with them and with config.py.

Nothing here reaches Google: the files are parsed, the README's gcloud sequences are read as data,
and the Dockerfile's command serves the app here, against the emulators, as Cloud Run would run it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
import requests
import yaml

from core.devserver.ports import free_port
from core.devserver.processes import stop_process_group
from core.tasks.queues import load_queue_config
from tests.docs.readme import CHECKOUT, code_blocks, section, setting_names
from tests.e2e.conftest import wait_for
from tests.services.tasks_emulator import start_tasks_emulator

QUEUES = set(load_queue_config(CHECKOUT / "deploy" / "queue.yaml"))
RUNTIME_ROLES = {"roles/cloudtasks.enqueuer", "roles/run.invoker", "roles/iam.serviceAccountUser",
                 "roles/datastore.user", "roles/secretmanager.secretAccessor"}
DEPLOYER_ROLES = {"roles/cloudtasks.queueAdmin", "roles/cloudscheduler.admin", "roles/iam.serviceAccountUser"}


def shell_lines(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not
            line.lstrip().startswith("#")]


def assignments(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if re.match(r"[A-Z_]+=\S", line) and " " not in line)


def option(line: str, name: str) -> str:
    (value,) = [word.split("=", 1)[1] for word in shlex.split(line, posix=False) if word.startswith(f"--{name}=")]
    return value


def pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def cloud_run() -> list[str]:
    (block,) = code_blocks(section("Cloud Run", level=3), "sh")
    return shell_lines(block)


def app_engine() -> list[str]:
    (block,) = code_blocks(section("App Engine", level=3), "sh")
    return shell_lines(block)


# --- the files ---------------------------------------------------------------------------------

def test_app_yaml_serves_main_app_with_gunicorn_and_keeps_env_variables_last():
    text = (CHECKOUT / "app.yaml").read_text()
    config = yaml.safe_load(text)
    assert re.fullmatch(r"python3\d+", config["runtime"])
    entry = shlex.split(config["entrypoint"])
    assert entry[0] == "gunicorn" and entry[-1] == "main:app" and ":$PORT" in entry
    assert set(config["env_variables"]) <= setting_names()
    assert list(config)[-1] == "env_variables"  # the README's deploy appends the secrets to it
    admin_only = {handler["url"] for handler in config["handlers"] if handler.get("login") == "admin"}
    assert "/_tasks/(deferred|queryIter|cron/.*)" in admin_only


def test_index_yaml_declares_valid_composite_indexes():
    indexes = yaml.safe_load((CHECKOUT / "deploy" / "index.yaml").read_text())["indexes"]
    assert indexes
    for index in indexes:
        assert set(index) <= {"kind", "ancestor", "properties"} and isinstance(index["kind"], str)
        assert index.get("ancestor", "no") in ("yes", "no")
        assert len(index["properties"]) >= 2 or index.get("ancestor") == "yes"
        for prop in index["properties"]:
            assert set(prop) <= {"name", "direction"} and prop.get("direction", "asc") in ("asc", "desc")


def test_queue_and_cron_yaml_parse():
    assert "default" in QUEUES
    cron = yaml.safe_load((CHECKOUT / "cron.yaml").read_text())["cron"]
    assert all(entry["url"].startswith("/_tasks/cron/") and entry["schedule"] for entry in cron)


def dockerfile_command() -> list[str]:
    instructions = [line for line in (CHECKOUT / "Dockerfile").read_text().splitlines()
                    if re.match(r"(CMD|ENTRYPOINT)\b", line)]
    assert len(instructions) == 1 and instructions[0].startswith("CMD "), instructions
    command = json.loads(instructions[0].removeprefix("CMD "))
    assert isinstance(command, list) and all(isinstance(word, str) for word in command)
    return command


@pytest.mark.e2e
def test_the_dockerfile_command_serves_the_app_as_cloud_run_runs_it(datastore_emulator, tmp_path):
    command = dockerfile_command()
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TASKS_", "DATASTORE_", "GAE_", "LOCAL_")) and key not in ("CRON_YAML", "QUEUE_YAML")}
    with start_tasks_emulator(target_port=port, queues=sorted(QUEUES), project="run-project",
                              location="europe-west1") as tasks_emulator:
        url = f"http://127.0.0.1:{port}"
        env.update(PORT=str(port), K_SERVICE="tasks-app", K_REVISION="tasks-app-00001",
                   PATH=f"{CHECKOUT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}",
                   GOOGLE_CLOUD_PROJECT="run-project", TASKS_REGION="europe-west1", TASKS_TARGET="http",
                   TASKS_TARGET_URL=url, TASKS_SERVICE_ACCOUNT="tasks-runner@run-project.iam.gserviceaccount.com",
                   TASKS_OIDC_AUDIENCE=url, TASKS_SECRET="s" * 64, SECRET_KEY="k" * 64,
                   DATASTORE_EMULATOR_HOST=datastore_emulator.host, TASKS_EMULATOR=tasks_emulator.host,
                   LOCAL_DATA_DIR=str(tmp_path / "data"))
        log = (tmp_path / "server.log").open("wb")
        server = subprocess.Popen(command, cwd=CHECKOUT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            def home() -> requests.Response | None:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    return requests.get(url + "/", timeout=30)
                except requests.ConnectionError:
                    return None

            response = wait_for(home, timeout=120, message="the container command to serve")
            assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]
            # On Cloud Run the push routes want an OIDC token: a bare request runs nothing and gets a 4xx.
            refused = requests.get(url + "/_tasks/cron/default", timeout=10)
            assert 400 <= refused.status_code < 500
        finally:
            stop_process_group(server)
            log.close()


# --- the README's sequences ----------------------------------------------------------------------

def test_cloud_run_commands_use_one_service_account_and_the_settings_config_reads():
    lines = cloud_run()
    names = assignments(lines)
    account = names["SA"]
    (created,) = [line.split()[4] for line in lines if line.startswith("gcloud iam service-accounts create")]
    assert account.startswith(f"{created}@")
    (deploy,) = [line for line in lines if line.startswith("gcloud run deploy")]
    assert option(deploy, "service-account") == "$SA"
    assert "--allow-unauthenticated" in deploy.split()
    env = pairs(option(deploy, "set-env-vars"))
    secrets = pairs(option(deploy, "set-secrets"))
    assert set(env) | set(secrets) <= setting_names()
    assert {"TASKS_SECRET", "SECRET_KEY"} <= set(secrets)
    assert env["TASKS_SERVICE_ACCOUNT"] == "$SA" and env["TASKS_TARGET"] == "http"
    assert env["TASKS_OIDC_AUDIENCE"] == env["TASKS_TARGET_URL"] == "$URL"
    # The commands run from the deploying machine see the same settings as the service.
    (export,) = [line for line in lines if line.startswith("export ")]
    assert dict(word.split("=", 1) for word in export.split()[1:]) == env
    # Each secret the service reads is one the README creates and lets the account read.
    created_secrets = set(re.findall(r"gcloud secrets create (\S+)", code_blocks(section("Deploying"), "sh")[0]))
    granted = {line.split()[3] for line in lines if line.startswith("gcloud secrets add-iam-policy-binding")
               and "--member=serviceAccount:$SA" in line and "roles/secretmanager.secretAccessor" in line}
    assert {value.split(":")[0] for value in secrets.values()} <= created_secrets & granted
    for line in lines:
        if "--member=" in line:
            assert option(line, "member") == "serviceAccount:$SA", line


def test_cloud_run_commands_grant_the_roles_by_their_exact_names():
    lines = cloud_run()
    granted = {option(line, "role") for line in lines if "--role=" in line}
    assert RUNTIME_ROLES <= granted
    table = section("Cloud Run", level=3)
    named = set(re.findall(r"`(roles/[a-zA-Z.]+)`", table))
    assert (RUNTIME_ROLES | DEPLOYER_ROLES) <= named
    assert all(re.fullmatch(r"roles/[a-z]+(\.[a-zA-Z]+)+", role) for role in named | granted)


def test_cloud_run_creates_exactly_the_queues_of_queue_yaml_and_runs_the_sync_commands():
    lines = cloud_run()
    created = {line.split()[4] for line in lines if line.startswith("gcloud tasks queues create")}
    assert created == QUEUES
    assert any(line.endswith("flask --app main tasks sync-queues") for line in lines)
    assert any(line.endswith("flask --app main tasks sync-scheduler") for line in lines)
    assert any(line == "gcloud datastore indexes create deploy/index.yaml" for line in lines)
    assert any(line.startswith("gcloud builds submit --tag $IMAGE") for line in lines)


def test_app_engine_commands_deploy_the_files_with_the_secrets_appended(tmp_path):
    lines = app_engine()
    for path in re.findall(r"(?<![\w./])(?:deploy/)?[a-z.]+\.yaml\b", " ".join(lines)):
        assert (CHECKOUT / path).exists() or path == "app.deploy.yaml", path
    assert "cp app.yaml app.deploy.yaml" in lines
    assert "gcloud app deploy app.deploy.yaml cron.yaml" in lines
    assert "gcloud datastore indexes create deploy/index.yaml" in lines
    assert any(line.endswith("flask --app main tasks sync-queues") for line in lines)
    # What the echo lines append, with stand-in values, leaves a valid app.yaml with every secret set.
    appended = [re.sub(r"'\$\(.*?\)'|'\$\w+'", "'x'", line.split('"')[1]) for line in lines
                if line.startswith("echo ") and line.endswith(">> app.deploy.yaml")]
    copy = (CHECKOUT / "app.yaml").read_text() + "\n".join(appended) + "\n"
    env = yaml.safe_load(copy)["env_variables"]
    assert {"TASKS_SECRET", "SECRET_KEY", "GOOGLE_CLOUD_PROJECT", "TASKS_REGION"} <= set(env) <= setting_names()
    assert "app.deploy.yaml" in (CHECKOUT / ".gitignore").read_text().splitlines()


def test_every_file_the_deploy_section_names_exists():
    text = section("Deploying")
    for path in set(re.findall(r"`((?:deploy/)?[\w.-]+\.(?:yaml|txt)|Dockerfile)`", text)) - {"app.deploy.yaml"}:
        assert (CHECKOUT / path).exists(), path
