"""Settings read from the environment, once, lazily.

Every environment variable the project reads is declared here, in one place, and documented in
the README's configuration table. Nothing reads ``os.environ`` elsewhere.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from core.files import private_dir, private_file, write_private


def project_root() -> Path:
    """The user's project: the working directory the app, the CLI or the local stack runs in.

    Defaults (``queue.yaml``, ``cron.yaml``, ``.local-data``) are found here, never next to the
    installed package.
    """
    return Path.cwd()


def default_queue_yaml(root: Path) -> Path:
    """``queue.yaml`` at the project root, else ``deploy/queue.yaml`` (where this repository keeps it)."""
    for candidate in (root / "queue.yaml", root / "deploy" / "queue.yaml"):
        if candidate.exists():
            return candidate
    return root / "queue.yaml"


#: How much larger than the task payload limit a request body may be by default.
REQUEST_SIZE_MARGIN = 65_536


def _flag(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _runtime(environ: Mapping[str, str]) -> str:
    """Where the app runs: ``appengine``, ``cloudrun`` or ``local``."""
    if environ.get("GAE_ENV", "").startswith("standard") or environ.get("GAE_APPLICATION"):
        return "appengine"
    if environ.get("K_SERVICE"):
        return "cloudrun"
    return "local"


PRIORITIES = ("high", "normal", "low")
DEFAULT_PRIORITY_QUEUES: tuple[tuple[str, str | None], ...] = (("high", "high"), ("normal", None), ("low", "low"))


def parse_priority_queues(text: str) -> tuple[tuple[str, str | None], ...]:
    """``"high=urgent,low=bulk"`` -> the priority mapping; priorities left out keep their default.

    An empty queue (``normal=``) means the default queue.
    """
    mapping = dict(DEFAULT_PRIORITY_QUEUES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        priority, sep, queue = (s.strip() for s in part.partition("="))
        if not sep or priority not in PRIORITIES:
            raise ValueError(f"TASKS_PRIORITY_QUEUES: expected entries like 'high=urgent' for the priorities "
                             f"{', '.join(PRIORITIES)}, got {part!r}")
        mapping[priority] = queue or None
    return tuple(mapping.items())


@dataclasses.dataclass(frozen=True)
class Settings:
    """The project's configuration. Build with :meth:`from_env`; override with :meth:`replace`."""

    project: str = "local-project"
    namespace: str | None = None
    runtime: str = "local"
    app_version: str = "local"
    datastore_emulator_host: str | None = None
    #: ``local`` (durable local queue), ``cloudtasks`` or ``inline`` (tests).
    tasks_backend: str = "local"
    tasks_region: str = "europe-west1"
    tasks_emulator_host: str | None = None
    #: ``appengine`` (App Engine target) or ``http`` (HTTP target with an OIDC token).
    tasks_target: str = "appengine"
    tasks_target_url: str | None = None
    tasks_service_account: str | None = None
    tasks_oidc_audience: str | None = None
    #: Where the OIDC verifier takes its public certificates from (URL or PEM/JSON file).
    tasks_oidc_certs: str = "https://www.googleapis.com/oauth2/v1/certs"
    tasks_secret: str = ""
    #: Cloud Scheduler: jobs whose id starts with this prefix belong to ``sync-scheduler``.
    tasks_scheduler_prefix: str = "tasks-cron-"
    #: Cloud Scheduler's location (default: ``tasks_region``).
    tasks_scheduler_region: str | None = None
    tasks_scheduler_emulator_host: str | None = None
    #: ``json`` (Cloud Logging structured lines), ``text``, or ``auto``: JSON outside local development.
    log_format: str = "auto"
    tasks_default_queue: str = "default"
    tasks_payload_limit: int = 100_000
    #: Largest request body accepted (413 beyond); ``None``: the payload limit plus 64 KiB.
    max_request_bytes: int | None = None
    #: Seconds a client may leave a request body unsent before it gets 408 (:mod:`core.request_bodies`).
    request_body_timeout: float = 10.0
    tasks_timezone: str = "UTC"
    #: Time budget of one QueryIter chunk, well inside the queue's dispatch deadline.
    tasks_query_chunk_seconds: float = 10.0
    #: Lease of a task's lock: renewed while the task runs, expires this long after its holder died.
    tasks_lock_lease_seconds: float = 60.0
    #: ``priority=`` of a deferred function -> queue (``None``: the default queue).
    tasks_priority_queues: tuple[tuple[str, str | None], ...] = DEFAULT_PRIORITY_QUEUES
    #: Seconds a task record (state and result) is kept after its task ended.
    tasks_result_ttl: float = 7 * 24 * 3600.0
    #: Queues whose every deferred call is tracked (has a task record).
    tasks_tracked_queues: frozenset[str] = frozenset()
    queue_yaml: Path = dataclasses.field(default_factory=lambda: default_queue_yaml(project_root()))
    cron_yaml: Path = dataclasses.field(default_factory=lambda: project_root() / "cron.yaml")
    local_data_dir: Path = dataclasses.field(default_factory=lambda: project_root() / ".local-data")
    #: Base URL the local queue pushes to (the app itself).
    local_app_url: str = "http://127.0.0.1:8080"
    port: int = 8080
    secret_key: str = ""
    #: The app's home page, linked from the header of the task pages.
    tasks_home_url: str = "/"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        runtime = _runtime(env)
        port = int(env.get("PORT", "8080"))
        default_backend = "local" if runtime == "local" else "cloudtasks"
        default_target = "http" if runtime == "cloudrun" else "appengine"
        root = project_root()
        data_dir = Path(env.get("LOCAL_DATA_DIR") or root / ".local-data").absolute()
        return cls(
            project=env.get("GOOGLE_CLOUD_PROJECT") or env.get("DATASTORE_PROJECT_ID") or "local-project",
            namespace=env.get("DATASTORE_NAMESPACE") or None,
            runtime=runtime,
            app_version=env.get("APP_VERSION") or env.get("GAE_VERSION") or env.get("K_REVISION") or "local",
            datastore_emulator_host=env.get("DATASTORE_EMULATOR_HOST") or None,
            tasks_backend=env.get("TASKS_BACKEND", default_backend),
            tasks_region=env.get("TASKS_REGION", "europe-west1"),
            tasks_emulator_host=env.get("TASKS_EMULATOR") or None,
            tasks_target=env.get("TASKS_TARGET", default_target),
            tasks_target_url=env.get("TASKS_TARGET_URL") or None,
            tasks_service_account=env.get("TASKS_SERVICE_ACCOUNT") or None,
            tasks_oidc_audience=env.get("TASKS_OIDC_AUDIENCE") or None,
            tasks_oidc_certs=env.get("TASKS_OIDC_CERTS", cls.tasks_oidc_certs),
            tasks_secret=env.get("TASKS_SECRET", ""),
            tasks_scheduler_prefix=env.get("TASKS_SCHEDULER_PREFIX", "tasks-cron-"),
            tasks_scheduler_region=env.get("TASKS_SCHEDULER_REGION") or None,
            tasks_scheduler_emulator_host=env.get("TASKS_SCHEDULER_EMULATOR") or None,
            log_format=env.get("LOG_FORMAT", "auto").strip().lower() or "auto",
            tasks_default_queue=env.get("TASKS_DEFAULT_QUEUE", "default"),
            tasks_payload_limit=int(env.get("TASKS_PAYLOAD_LIMIT", "100000")),
            max_request_bytes=int(env["REQUEST_SIZE_LIMIT"]) if env.get("REQUEST_SIZE_LIMIT") else None,
            request_body_timeout=float(env.get("REQUEST_BODY_TIMEOUT", "10")),
            tasks_timezone=env.get("TASKS_TIMEZONE", "UTC"),
            tasks_query_chunk_seconds=float(env.get("TASKS_QUERY_CHUNK_SECONDS", "10")),
            tasks_lock_lease_seconds=float(env.get("TASKS_LOCK_LEASE_SECONDS", "60")),
            tasks_priority_queues=parse_priority_queues(env.get("TASKS_PRIORITY_QUEUES", "")),
            tasks_result_ttl=float(env.get("TASKS_RESULT_TTL", str(7 * 24 * 3600))),
            tasks_tracked_queues=frozenset(q.strip() for q in env.get("TASKS_TRACKED_QUEUES", "").split(",")
                                           if q.strip()),
            queue_yaml=Path(env.get("QUEUE_YAML") or default_queue_yaml(root)).absolute(),
            cron_yaml=Path(env.get("CRON_YAML") or root / "cron.yaml").absolute(),
            local_data_dir=data_dir,
            local_app_url=env.get("LOCAL_APP_URL", f"http://127.0.0.1:{port}"),
            port=port,
            secret_key=env.get("SECRET_KEY", ""),
            tasks_home_url=env.get("TASKS_HOME_URL") or "/",
        )

    @property
    def tasks_service_accounts(self) -> tuple[str, ...]:
        """``TASKS_SERVICE_ACCOUNT`` split at commas: the first signs OIDC tokens, all are accepted."""
        return tuple(part.strip() for part in (self.tasks_service_account or "").split(",") if part.strip())

    @property
    def log_json(self) -> bool:
        """Whether log lines are Cloud Logging structured JSON (``log_format``)."""
        return self.log_format == "json" or (self.log_format == "auto" and self.runtime != "local")

    @property
    def request_size_limit(self) -> int:
        """Largest request body accepted: a task body up to the payload limit, with room to spare."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return self.tasks_payload_limit + REQUEST_SIZE_MARGIN

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_local_secrets(self) -> Settings:
        """Fill missing secrets for local use from a file in the local data folder.

        In production both secrets must be set; a local run keeps generated ones across restarts
        so that queued tasks stay verifiable.
        """
        if self.tasks_secret and self.secret_key:
            return self
        if self.runtime != "local":
            raise RuntimeError("TASKS_SECRET and SECRET_KEY must be set outside local development")
        private_dir(self.local_data_dir)
        path = self.local_data_dir / "secrets"
        if not path.exists():
            # Several processes may start at once: the first link wins, the others read it.
            tmp = path.with_name(f"secrets.{os.getpid()}.tmp")
            write_private(tmp, f"{secrets.token_hex(32)}\n{secrets.token_hex(32)}\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        private_file(path)  # one written by an older version may be readable by all
        task_secret, key = path.read_text().split()[:2]
        return self.replace(tasks_secret=self.tasks_secret or task_secret, secret_key=self.secret_key or key)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment, read on first use."""
    return Settings.from_env()


def flag(name: str, default: bool = False) -> bool:
    """A boolean environment switch (used by scripts, not by the core)."""
    return _flag(os.environ.get(name), default)
