"""The local stack: Datastore emulator + durable local queue + gunicorn or granian serving any app module.

``python -m core.devserver myapp:app`` (or ``flask --app myapp tasks run-local``) runs it in the
foreground, with data kept under the project's ``.local-data/``; end-to-end tests and benchmarks
start it on free ports with throw-away data. Every process is started in its own process group
and stopped by PID, so nothing outlives the stack. A started stack writes ``stack.json`` into its
data folder, so commands run beside it (``flask users create``) find its emulator. One stack per
data folder: a second is refused before it starts anything, naming the first's PID and URL
(:mod:`core.devserver.folder_lock`), and a stack removes only the files it wrote.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from core.config import Settings, default_queue_yaml, project_root
from core.devserver.datastore_emulator import DatastoreEmulator, start_datastore_emulator
from core.devserver.folder_lock import FolderInUse, FolderLock
from core.devserver.ports import free_port, port_is_open
from core.devserver.processes import stop_process_group
from core.devserver.servers import checked_server, server_command, server_from_env
from core.scaffold import missing_file_notes
from core.tasks.periodic.cronyaml import CronPinger

log = logging.getLogger("devserver")

#: Written into the data folder while a stack runs: where its emulator and app listen.
STATE_FILE = "stack.json"

#: A dispatcher that dies more often than this within the window is not restarted again.
DISPATCHER_RESTARTS = 5
DISPATCHER_RESTART_WINDOW = 60


@dataclasses.dataclass
class LocalStack:
    """One app on embedded defaults. ``start()``, use ``url``, ``stop()``."""

    #: Folder of ``data_dir=None``: the project root, from which the server imports the app module.
    data_dir: Path | None = None
    port: int | None = None
    persist: bool = True
    #: ``gunicorn`` or ``granian`` (:mod:`core.devserver.servers`); default: ``TASKS_SERVER``, else gunicorn.
    server: str = dataclasses.field(default_factory=server_from_env)
    workers: int = 2
    #: gunicorn's threaded workers, as app.yaml's entrypoint runs them: keep-alive lets the local queue
    #: reuse its connections (a sync worker closes every one). granian's workers are always threaded.
    worker_class: str = "gthread"
    #: Threads per worker (granian's blocking threads).
    threads: int = 4
    app_module: str = "main:app"
    #: An already running emulator to use instead of starting one (tests share one per session).
    datastore: DatastoreEmulator | None = None
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Ping the cron groups of cron.yaml on their schedule, as App Engine's cron does.
    cron: bool = True
    queue_yaml: Path | None = None
    dispatcher_args: tuple[str, ...] = ()
    log_dir: Path | None = None
    #: The user's project (working directory and import path of the app processes).
    root: Path = dataclasses.field(default_factory=project_root)

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        self.data_dir = Path(self.data_dir or self.root / ".local-data").absolute()
        self.queue_yaml = Path(self.queue_yaml or default_queue_yaml(self.root)).absolute()
        self._own_datastore = False
        self.server_process: subprocess.Popen[bytes] | None = None
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.cron_pinger: Any = None
        self._restarts: list[float] = []
        self._folder_lock = FolderLock(self.data_dir)
        self._wrote_state = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        assert self.datastore is not None and self.data_dir is not None
        env = {k: v for k, v in os.environ.items() if k not in ("DATASTORE_EMULATOR_HOST",)}
        env.update({
            "GOOGLE_CLOUD_PROJECT": env.get("GOOGLE_CLOUD_PROJECT", "local-project"),
            "DATASTORE_EMULATOR_HOST": self.datastore.host,
            "TASKS_BACKEND": "local",
            "LOCAL_DATA_DIR": str(self.data_dir),
            "PORT": str(self.port),
            "LOCAL_APP_URL": self.url,
            "QUEUE_YAML": str(self.queue_yaml),
            "CRON_YAML": env.get("CRON_YAML") or str(self.root / "cron.yaml"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")])),
        })
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        """The settings the app processes of this stack read (secrets included)."""
        return Settings.from_env(self.env).with_local_secrets()

    @property
    def queue_db(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "queue.sqlite3"

    @property
    def state_file(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / STATE_FILE

    def _log(self, name: str) -> Any:
        assert self.data_dir is not None
        folder = self.log_dir or self.data_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f"{name}.log", "ab")

    def start(self) -> LocalStack:
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self._folder_lock.acquire(self.url)  # before anything starts: FolderInUse if another stack serves it
        try:
            if port_is_open(self.port):
                raise RuntimeError(f"port {self.port} is already in use")
            if self.datastore is None:
                self.datastore = start_datastore_emulator(data_dir=self.data_dir / "datastore", persist=self.persist)
                self._own_datastore = True
            self.settings  # noqa: B018 - creates the shared local secrets before the workers race for them
            self.start_dispatcher()
            self.start_server()
            if self.cron:
                self.start_cron()
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def write_state(self) -> None:
        """Tell commands run beside the stack where its services listen (``stack.json``)."""
        assert self.datastore is not None
        state = {"pid": os.getpid(), "url": self.url, "datastore_emulator_host": self.datastore.host}
        tmp = self.state_file.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)
        self._wrote_state = True

    @property
    def app_slots(self) -> int:
        """Requests the app's workers serve at once (each threaded worker one per thread)."""
        threaded = self.server == "granian" or self.worker_class == "gthread"
        return self.workers * (self.threads if threaded else 1)

    def dispatcher_command(self) -> list[str]:
        """The dispatcher's command line: at most :attr:`app_slots` connections unless told otherwise.

        More connections than the app serves at once add no concurrency: the extra requests only
        wait inside the server (gunicorn's poller pays for every waiting kept-alive connection).
        """
        limit = () if "--max-connections" in self.dispatcher_args else ("--max-connections", str(self.app_slots))
        return [sys.executable, "-m", "core.tasks.transports.local", "--db", str(self.queue_db),
                "--url", self.url, "--queue-yaml", str(self.queue_yaml), *limit, *self.dispatcher_args]

    def start_dispatcher(self) -> None:
        args = self.dispatcher_command()
        with self._log("dispatcher") as out:
            self.dispatcher = subprocess.Popen(args, env=self.env, cwd=self.root, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def gunicorn(self) -> subprocess.Popen[bytes] | None:
        """The app server's process (named for the stack's first server; it may run granian)."""
        return self.server_process

    def start_server(self, timeout: float = 60) -> None:
        """Start the app server and wait until it answers."""
        args = server_command(self.server, app_module=self.app_module, port=self.port or 0, workers=self.workers,
                              threads=self.threads, worker_class=self.worker_class)
        with self._log(self.server) as out:
            process = self.server_process = subprocess.Popen(args, env=self.env, cwd=self.root, stdout=out,
                                                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {process.returncode}: {self.log_tail(self.server)}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    response.read()
                return
            except urllib.error.HTTPError:
                return  # it answers; a 404 or 500 is the app's business
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.server} did not answer on {self.url}: {self.log_tail(self.server)}")

    def start_cron(self) -> None:
        settings = self.settings
        self.cron_pinger = CronPinger(self.url, settings.tasks_secret, settings.cron_yaml)
        self.cron_pinger.start()

    def worker_pids(self) -> list[int]:
        """PIDs of the server's worker processes (children of gunicorn's arbiter, of granian's main process)."""
        if self.server_process is None:
            return []
        pid = self.server_process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def log_tail(self, name: str, size: int = 3000) -> str:
        assert self.data_dir is not None
        path = (self.log_dir or self.data_dir / "logs") / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def supervise(self) -> bool:
        """Restart a dispatcher that died (its tasks are safe in SQLite); ``False`` when the stack must stop.

        The stack stops when the app server died, or when the dispatcher keeps dying right after its start.
        """
        if self.server_process is not None and self.server_process.poll() is not None:
            log.error("%s exited with %s:\n%s", self.server, self.server_process.returncode, self.log_tail(self.server))
            return False
        if self.dispatcher is None or self.dispatcher.poll() is None:
            return True
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < DISPATCHER_RESTART_WINDOW] + [now]
        if len(self._restarts) > DISPATCHER_RESTARTS:
            log.error("dispatcher exited with %s %d times within %d s; stopping:\n%s", self.dispatcher.returncode,
                      len(self._restarts), DISPATCHER_RESTART_WINDOW, self.log_tail("dispatcher"))
            return False
        log.warning("dispatcher exited with %s; restarting it (queued tasks are kept in %s)",
                    self.dispatcher.returncode, self.queue_db)
        self.start_dispatcher()
        log.info("dispatcher restarted (pid %d)", self.dispatcher.pid)
        return True

    def stop_dispatcher(self, sig: int = signal.SIGTERM) -> None:
        stop_process_group(self.dispatcher, sig)
        self.dispatcher = None

    def stop(self) -> None:
        if self._wrote_state:  # only its own: a refused stack never touches the running one's
            self.state_file.unlink(missing_ok=True)
            self._wrote_state = False
        if self.cron_pinger is not None:
            self.cron_pinger.stop()
            self.cron_pinger = None
        stop_process_group(self.server_process)
        self.server_process = None
        self.stop_dispatcher()
        if self._own_datastore and self.datastore is not None:
            self.datastore.stop()
            self.datastore = None
        self._folder_lock.release()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_local(app_module: str = "main:app", *, root: Path | None = None, port: int | None = None,
              data_dir: Path | None = None, server: str | None = None) -> None:
    """Run ``app_module`` on the local stack in the foreground until Ctrl-C or SIGTERM.

    Defaults come from the environment (``PORT``, ``LOCAL_DATA_DIR``, ``TASKS_SERVER``) and the project root (the
    working directory unless ``root`` is given): its ``.local-data/``, ``queue.yaml`` and ``cron.yaml``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = Path(root or project_root()).absolute()
    port = port or int(os.environ.get("PORT", "8080"))
    data_dir = Path(data_dir or os.environ.get("LOCAL_DATA_DIR") or root / ".local-data").absolute()
    stack = LocalStack(data_dir=data_dir, port=port, log_dir=data_dir / "logs", app_module=app_module, root=root,
                       server=checked_server(server) if server else server_from_env())
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # On the console, not only in a log: what this project lacks and what that means locally.
    assert stack.queue_yaml is not None  # resolved by LocalStack.__post_init__
    for note in missing_file_notes(stack.queue_yaml, Path(os.environ.get("CRON_YAML") or root / "cron.yaml")):
        print(f"run-local: {note}", file=sys.stderr, flush=True)
    try:
        stack.start()
    except FolderInUse as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(1) from None
    except RuntimeError as exc:  # a missing prerequisite (Java, the emulator), a port in use: say it plainly
        raise SystemExit(f"run-local: the local stack cannot start: {exc}") from exc
    log.info("serving %s at %s on %s (Datastore emulator %s, local queue %s, logs in %s)", app_module,
             stack.url, stack.server, stack.datastore.host if stack.datastore else "?", stack.queue_db,
             data_dir / "logs")
    try:
        while not stopping and stack.supervise():
            time.sleep(0.5)
    finally:
        log.info("stopping")
        stack.stop()


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The running stack's ``stack.json`` in ``data_dir``, or ``None`` if no stack runs there."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) else None
