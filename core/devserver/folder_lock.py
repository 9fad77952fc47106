"""One local stack per data folder: an exclusive ``flock`` on ``<folder>/stack.lock`` while it runs.

Two stacks on one folder would run two emulators and two dispatchers on the same files (and the
second, stopping, used to delete the first's ``stack.json``). The lock is taken before anything
starts and held by the stack's process for its life; the kernel drops it when that process ends,
however it ends, so a lock file left by a SIGKILLed stack never blocks the next one. The file
itself stays (deleting a lock file others may have open would let two holders in); it names the
holder's PID and URL for the refusal's message.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

LOCK_FILE = "stack.lock"


class FolderInUse(RuntimeError):
    """Another local stack serves this data folder."""

    def __init__(self, folder: Path, holder: dict[str, Any]) -> None:
        self.folder, self.pid, self.url = folder, holder.get("pid"), holder.get("url")
        who = f"PID {self.pid}, {self.url}" if self.pid is not None else "its PID not written yet"
        super().__init__(f"another local stack ({who}) serves {folder}; stop it first, or give this one "
                         f"another data folder (LOCAL_DATA_DIR)")


class FolderLock:
    """The lock of one data folder; :meth:`acquire` or :class:`FolderInUse`, :meth:`release` at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, url: str) -> None:
        """Take the folder for this process, writing its PID and ``url``; refuse if another stack has it."""
        if self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by the stack's processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderInUse(self.folder, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "url": url}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the folder go (closing the file drops the lock); the file stays for the next holder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
