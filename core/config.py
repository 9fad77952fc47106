"""Settings of an app: ``app.config`` first, the environment as the fallback.

Every setting the project reads is declared here, in one table (:data:`SOURCES`), and documented in
the README's configuration table. Nothing reads ``os.environ`` elsewhere.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

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


#: The HTTP servers the local stack can run an app on (``TASKS_SERVER``; see ``core.devserver.servers``).
SERVERS = ("gunicorn", "granian")
DEFAULT_SERVER = "gunicorn"

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
class Source:
    """Where one setting comes from: its ``app.config`` key, then environment variables in order."""

    field: str
    key: str
    env: tuple[str, ...]
    parse: Callable[[Any], Any] = str


def _text_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _split(value: Any) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value
    return frozenset(str(item).strip() for item in items if str(item).strip())


def _priorities(value: Any) -> tuple[tuple[str, str | None], ...]:
    if isinstance(value, Mapping):
        value = ",".join(f"{priority}={queue or ''}" for priority, queue in value.items())
    return parse_priority_queues(str(value))


def _path(value: Any) -> Path:
    return Path(value).absolute()


#: Every setting the project reads, in the README's configuration table order. ``app.config`` wins
#: (so ``app.config.from_prefixed_env()`` and ``from_mapping`` work); the environment is the fallback.
SOURCES: tuple[Source, ...] = (
    Source("project", "TASKS_PROJECT", ("GOOGLE_CLOUD_PROJECT", "DATASTORE_PROJECT_ID")),
    Source("namespace", "TASKS_NAMESPACE", ("DATASTORE_NAMESPACE",), _text_or_none),
    Source("datastore_emulator_host", "TASKS_DATASTORE_EMULATOR_HOST", ("DATASTORE_EMULATOR_HOST",), _text_or_none),
    Source("tasks_backend", "TASKS_BACKEND", ("TASKS_BACKEND",)),
    Source("tasks_region", "TASKS_REGION", ("TASKS_REGION",)),
    Source("tasks_emulator_host", "TASKS_EMULATOR", ("TASKS_EMULATOR",), _text_or_none),
    Source("tasks_target", "TASKS_TARGET", ("TASKS_TARGET",)),
    Source("tasks_target_url", "TASKS_TARGET_URL", ("TASKS_TARGET_URL",), _text_or_none),
    Source("tasks_service_account", "TASKS_SERVICE_ACCOUNT", ("TASKS_SERVICE_ACCOUNT",), _text_or_none),
    Source("tasks_oidc_audience", "TASKS_OIDC_AUDIENCE", ("TASKS_OIDC_AUDIENCE",), _text_or_none),
    Source("tasks_scheduler_prefix", "TASKS_SCHEDULER_PREFIX", ("TASKS_SCHEDULER_PREFIX",)),
    Source("tasks_scheduler_region", "TASKS_SCHEDULER_REGION", ("TASKS_SCHEDULER_REGION",), _text_or_none),
    Source("tasks_scheduler_emulator_host", "TASKS_SCHEDULER_EMULATOR", ("TASKS_SCHEDULER_EMULATOR",),
           _text_or_none),
    Source("log_format", "TASKS_LOG_FORMAT", ("LOG_FORMAT",), lambda v: str(v).strip().lower() or "auto"),
    Source("tasks_oidc_certs", "TASKS_OIDC_CERTS", ("TASKS_OIDC_CERTS",)),
    Source("tasks_secret", "TASKS_SECRET", ("TASKS_SECRET",)),
    Source("secret_key", "SECRET_KEY", ("SECRET_KEY",)),
    Source("tasks_default_queue", "TASKS_DEFAULT_QUEUE", ("TASKS_DEFAULT_QUEUE",)),
    Source("tasks_payload_limit", "TASKS_PAYLOAD_LIMIT", ("TASKS_PAYLOAD_LIMIT",), int),
    Source("max_request_bytes", "TASKS_REQUEST_SIZE_LIMIT", ("REQUEST_SIZE_LIMIT",), int),
    Source("request_body_timeout", "TASKS_REQUEST_BODY_TIMEOUT", ("REQUEST_BODY_TIMEOUT",), float),
    Source("tasks_server", "TASKS_SERVER", ("TASKS_SERVER",)),
    Source("tasks_timezone", "TASKS_TIMEZONE", ("TASKS_TIMEZONE",)),
    Source("tasks_query_chunk_seconds", "TASKS_QUERY_CHUNK_SECONDS", ("TASKS_QUERY_CHUNK_SECONDS",), float),
    Source("tasks_lock_lease_seconds", "TASKS_LOCK_LEASE_SECONDS", ("TASKS_LOCK_LEASE_SECONDS",), float),
    Source("tasks_priority_queues", "TASKS_PRIORITY_QUEUES", ("TASKS_PRIORITY_QUEUES",), _priorities),
    Source("tasks_result_ttl", "TASKS_RESULT_TTL", ("TASKS_RESULT_TTL",), float),
    Source("tasks_tracked_queues", "TASKS_TRACKED_QUEUES", ("TASKS_TRACKED_QUEUES",), _split),
    Source("app_version", "TASKS_APP_VERSION", ("APP_VERSION", "GAE_VERSION", "K_REVISION")),
    Source("queue_yaml", "TASKS_QUEUE_YAML", ("QUEUE_YAML",), _path),
    Source("cron_yaml", "TASKS_CRON_YAML", ("CRON_YAML",), _path),
    Source("local_data_dir", "TASKS_LOCAL_DATA_DIR", ("LOCAL_DATA_DIR",), _path),
    Source("local_app_url", "TASKS_LOCAL_APP_URL", ("LOCAL_APP_URL",)),
    Source("port", "TASKS_PORT", ("PORT",), int),
    Source("tasks_home_url", "TASKS_HOME_URL", ("TASKS_HOME_URL",)),
)


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
    #: The local stack's HTTP server (``core.devserver.servers``); the stack reads ``TASKS_SERVER`` itself.
    tasks_server: str = DEFAULT_SERVER
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
    def from_config(cls, config: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of an app: each from ``config`` (``app.config``) first, else the environment.

        A value in ``config`` may be typed already (``from_prefixed_env`` parses JSON) or a string.
        """
        config = {} if config is None else config
        env = os.environ if environ is None else environ
        values = _parsed(config, env)
        runtime = str(config.get("TASKS_RUNTIME") or _runtime(env))
        values.setdefault("tasks_backend", "local" if runtime == "local" else "cloudtasks")
        values.setdefault("tasks_target", "http" if runtime == "cloudrun" else "appengine")
        values.setdefault("local_app_url", f"http://127.0.0.1:{values.get('port', 8080)}")
        root = project_root()
        values.setdefault("queue_yaml", default_queue_yaml(root).absolute())
        values.setdefault("cron_yaml", (root / "cron.yaml").absolute())
        values.setdefault("local_data_dir", (root / ".local-data").absolute())
        return cls(runtime=runtime, **values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from the environment alone (processes without an app: the local stack)."""
        return cls.from_config({}, environ)

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


def _parsed(config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``config`` or ``env`` give, parsed, by field; a value that cannot be used names its key."""
    values: dict[str, Any] = {}
    for source in SOURCES:
        raw, origin = _lookup(source, config, env)
        if origin is None:
            continue
        try:
            values[source.field] = source.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {origin}: cannot use {raw!r}: {exc}") from None
    return values


def configured(config: Mapping[str, Any]) -> dict[str, Any]:
    """Only what ``config`` (``app.config``) itself sets, parsed, by field (the test plugin keeps it)."""
    return _parsed(config, {})


def _lookup(source: Source, config: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Any, str | None]:
    """``(value, where it was found)``; an empty or ``None`` value counts as not set."""
    value = config.get(source.key)
    if value is not None and value != "":
        return value, f"app.config[{source.key!r}]"
    for name in source.env:
        text = env.get(name)
        if text:
            return text, f"${name}"
    return None, None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment, read on first use."""
    return Settings.from_env()


def flag(name: str, default: bool = False) -> bool:
    """A boolean environment switch (used by scripts, not by the core)."""
    return _flag(os.environ.get(name), default)
