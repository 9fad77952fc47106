"""The local stack: Datastore emulator + durable local queue + gunicorn serving ``main:app``.

``python main.py`` runs it in the foreground (data kept under ``.local-data/``); end-to-end tests
and benchmarks start it on free ports with throw-away data. Every process is started in its own
process group and stopped by PID, so nothing outlives the stack.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from core.config import PROJECT_ROOT, Settings
from deploy.datastore_emulator import DatastoreEmulator, start_datastore_emulator
from deploy.ports import free_port, port_is_open
from deploy.processes import stop_process_group

log = logging.getLogger("devserver")


@dataclasses.dataclass
class LocalStack:
    """One app on embedded defaults. ``start()``, use ``url``, ``stop()``."""

    data_dir: Path = PROJECT_ROOT / ".local-data"
    port: int | None = None
    persist: bool = True
    workers: int = 2
    #: Threaded workers, as app.yaml's entrypoint runs them: keep-alive lets the local queue reuse
    #: its connections (a sync worker closes every one).
    worker_class: str = "gthread"
    threads: int = 4
    app_module: str = "main:app"
    #: An already running emulator to use instead of starting one (tests share one per session).
    datastore: DatastoreEmulator | None = None
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Ping the cron groups of cron.yaml on their schedule, as App Engine's cron does.
    cron: bool = True
    queue_yaml: Path = PROJECT_ROOT / "deploy" / "queue.yaml"
    dispatcher_args: tuple[str, ...] = ()
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        self._own_datastore = False
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.cron_pinger: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        assert self.datastore is not None
        env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST",)}
        env.update({
            "GOOGLE_CLOUD_PROJECT": env.get("GOOGLE_CLOUD_PROJECT", "local-project"),
            "DATASTORE_EMULATOR_HOST": self.datastore.host,
            "TASKS_BACKEND": "local",
            "LOCAL_DATA_DIR": str(self.data_dir),
            "PORT": str(self.port),
            "LOCAL_APP_URL": self.url,
            "QUEUE_YAML": str(self.queue_yaml),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        })
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        """The settings the app processes of this stack read (secrets included)."""
        return Settings.from_env(self.env).with_local_secrets()

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    def _log(self, name: str) -> Any:
        folder = self.log_dir or self.data_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f"{name}.log", "ab")

    def start(self) -> LocalStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        if self.datastore is None:
            self.datastore = start_datastore_emulator(data_dir=self.data_dir / "datastore", persist=self.persist)
            self._own_datastore = True
        self.settings  # noqa: B018 - creates the shared local secrets before the workers race for them
        try:
            self.start_dispatcher()
            self.start_gunicorn()
            if self.cron:
                self.start_cron()
        except BaseException:
            self.stop()
            raise
        return self

    def start_dispatcher(self) -> None:
        args = [sys.executable, "-m", "core.tasks.transports.local", "--db", str(self.queue_db),
                "--url", self.url, "--queue-yaml", str(self.queue_yaml), *self.dispatcher_args]
        with self._log("dispatcher") as out:
            self.dispatcher = subprocess.Popen(args, env=self.env, cwd=PROJECT_ROOT, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True)

    def start_gunicorn(self, timeout: float = 60) -> None:
        args = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                "--worker-class", self.worker_class, "--threads", str(self.threads),
                "--graceful-timeout", "5", "--timeout", "120", self.app_module]
        with self._log("gunicorn") as out:
            self.gunicorn = subprocess.Popen(args, env=self.env, cwd=PROJECT_ROOT, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.gunicorn.returncode}: {self.log_tail('gunicorn')}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    response.read()
                return
            except urllib.error.HTTPError:
                return  # it answers; a 404 or 500 is the app's business
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer on {self.url}: {self.log_tail('gunicorn')}")

    def start_cron(self) -> None:
        try:
            from core.tasks.cronyaml import CronPinger
        except ImportError:  # cron support not installed in this tree
            return
        settings = self.settings
        self.cron_pinger = CronPinger(self.url, settings.tasks_secret, settings.cron_yaml)
        self.cron_pinger.start()

    def worker_pids(self) -> list[int]:
        """PIDs of gunicorn's worker processes (children of the arbiter)."""
        if self.gunicorn is None:
            return []
        children = Path(f"/proc/{self.gunicorn.pid}/task/{self.gunicorn.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = (self.log_dir or self.data_dir / "logs") / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def stop_dispatcher(self, sig: int = signal.SIGTERM) -> None:
        stop_process_group(self.dispatcher, sig)
        self.dispatcher = None

    def stop(self) -> None:
        if self.cron_pinger is not None:
            self.cron_pinger.stop()
            self.cron_pinger = None
        stop_process_group(self.gunicorn)
        self.gunicorn = None
        self.stop_dispatcher()
        if self._own_datastore and self.datastore is not None:
            self.datastore.stop()
            self.datastore = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Run the app locally on embedded defaults until Ctrl-C (``python main.py``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    port = int(os.environ.get("PORT", "8080"))
    data_dir = Path(os.environ.get("LOCAL_DATA_DIR", str(PROJECT_ROOT / ".local-data")))
    stack = LocalStack(data_dir=data_dir, port=port, log_dir=data_dir / "logs")
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack.start()
    log.info("serving %s (Datastore emulator %s, local queue %s, logs in %s)",
             stack.url, stack.datastore.host if stack.datastore else "?", stack.queue_db, data_dir / "logs")
    try:
        while not stopping:
            for name, process in (("gunicorn", stack.gunicorn), ("dispatcher", stack.dispatcher)):
                if process is not None and process.poll() is not None:
                    log.error("%s exited with %s:\n%s", name, process.returncode, stack.log_tail(name))
                    stopping = True
            time.sleep(0.5)
    finally:
        log.info("stopping")
        stack.stop()
