"""Start and stop ``gcloud-tasks-emulator`` for tests and benchmarks.

The emulator lives in its own virtualenv (it pins protobuf<5, the app needs protobuf>=6), so it is
always run as a subprocess. It binds its gRPC port without complaint even when another process
already listens there, so the harness checks the port is free before the start and that the
emulator alone listens on it afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from core.devserver.processes import stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the project's scripts install the emulator (``deploy/requirements-tasks-emulator.txt``).
DEFAULT_BIN = REPO_ROOT / ".venv-tasks-emulator" / "bin" / "gcloud-tasks-emulator"
_LIST_QUEUES = "/google.cloud.tasks.v2.CloudTasks/ListQueues"


def emulator_binary() -> Path:
    """The emulator executable: ``$TASKS_EMULATOR_BIN``, the repo's venv, or ``PATH``."""
    configured = os.environ.get("TASKS_EMULATOR_BIN")
    if configured:
        return Path(configured)
    if DEFAULT_BIN.exists():
        return DEFAULT_BIN
    found = shutil.which("gcloud-tasks-emulator")
    if found:
        return Path(found)
    raise RuntimeError(
        f"gcloud-tasks-emulator not found: set TASKS_EMULATOR_BIN or create {DEFAULT_BIN.parent.parent.name}/ "
        "with `python -m venv .venv-tasks-emulator && "
        ".venv-tasks-emulator/bin/pip install -r deploy/requirements-tasks-emulator.txt`"
    )


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``port`` on any IPv4 or IPv6 address (the emulator binds ``[::]``)."""
    families: list[tuple[socket.AddressFamily, str]] = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, address in families:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_port(attempts: int = 20) -> int:
    """A port no one listens on right now, on any address."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port_is_free(port):
            return port
    raise RuntimeError("no free TCP port found")


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (Linux ``/proc``); ``None`` where that can't be read."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes if found_table else None


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _encode_list_queues(parent: str) -> bytes:
    """``ListQueuesRequest(parent=...)`` in protobuf wire format, so no Cloud client is needed here."""
    data = parent.encode()
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


@dataclasses.dataclass
class TasksEmulator:
    """A running emulator process; stop it with :meth:`stop` or use it as a context manager."""

    process: subprocess.Popen[bytes]
    port: int
    target_port: int
    project: str
    location: str
    queues: tuple[str, ...]
    log_path: Path

    @property
    def host(self) -> str:
        """``127.0.0.1:port``, the value for the ``TASKS_EMULATOR`` setting."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def queue_path(self, queue: str) -> str:
        return f"{self.parent}/queues/{queue}"

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the emulator's combined stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the emulator's process group and wait for it; safe to call twice."""
        stop_process_group(self.process, timeout=timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> TasksEmulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_ready(emulator: TasksEmulator, timeout: float) -> None:
    """Return once the emulator answers ``ListQueues``; raise RuntimeError when it can't."""
    deadline = time.monotonic() + timeout
    request = _encode_list_queues(emulator.parent)
    last_error: Exception | None = None
    with grpc.insecure_channel(emulator.host) as channel:
        call = channel.unary_unary(_LIST_QUEUES)
        while time.monotonic() < deadline:
            if not emulator.running():
                raise RuntimeError(
                    f"gcloud-tasks-emulator exited with status {emulator.process.returncode}:\n"
                    f"{emulator.log_tail()}"
                )
            try:
                call(request, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                return
            except grpc.RpcError as error:
                last_error = error
                time.sleep(0.05)
    raise RuntimeError(
        f"gcloud-tasks-emulator did not answer on {emulator.host} within {timeout:.0f}s "
        f"({last_error!r}):\n{emulator.log_tail()}"
    )


def _check_sole_listener(emulator: TasksEmulator) -> None:
    """Fail when another process listens on the emulator's port too (it binds with SO_REUSEPORT)."""
    listening = _listening_inodes(emulator.port)
    if listening is None:
        return
    foreign = listening - _socket_inodes(emulator.pid)
    if foreign or not listening:
        raise RuntimeError(
            f"port {emulator.port} is also bound by another process; the emulator's gRPC calls "
            "could reach the wrong server"
        )


def start_tasks_emulator(
    *,
    target_port: int,
    queues: Sequence[str] = ("default",),
    max_retries: int = 3,
    project: str = "test-project",
    location: str = "europe-west1",
    target_host: str = "127.0.0.1",
    timeout: float = 20.0,
) -> TasksEmulator:
    """Start an emulator on a free port that pushes tasks to ``target_host:target_port``.

    ``queues`` are created at start. ``max_retries`` bounds redelivery of a failing task (the
    emulator otherwise retries every 0.1 s forever; ``-1`` means exactly that). Raises
    RuntimeError with the emulator's output when it cannot start.
    """
    binary = emulator_binary()
    if not binary.exists():
        raise RuntimeError(f"gcloud-tasks-emulator not found at {binary}")
    port = free_port()
    args = [
        str(binary), "start",
        "-p", str(port),
        "-t", str(target_port),
        "-H", target_host,
        "-r", str(max_retries),
        "-q",
    ]
    for queue in queues:
        args += ["-d", f"projects/{project}/locations/{location}/queues/{queue}"]
    log_fd, log_name = tempfile.mkstemp(prefix="tasks-emulator-", suffix=".log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
    except OSError as error:
        os.close(log_fd)
        os.unlink(log_name)
        raise RuntimeError(f"cannot run {binary}: {error}") from error
    os.close(log_fd)
    emulator = TasksEmulator(
        process=process, port=port, target_port=target_port, project=project,
        location=location, queues=tuple(queues), log_path=Path(log_name),
    )
    try:
        _wait_ready(emulator, timeout)
        _check_sole_listener(emulator)
    except BaseException:
        emulator.stop()
        raise
    return emulator


@contextlib.contextmanager
def tasks_emulator(**kwargs: object) -> Iterator[TasksEmulator]:
    """:func:`start_tasks_emulator` as a context manager."""
    emulator = start_tasks_emulator(**kwargs)  # type: ignore[arg-type]
    try:
        yield emulator
    finally:
        emulator.stop()
