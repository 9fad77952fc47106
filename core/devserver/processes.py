"""Stopping the services a stack, a test or a benchmark started: by PID, whole process group."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_process_group(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                       timeout: float = 10.0) -> None:
    """Signal ``process``'s group (started with ``start_new_session=True``) and wait for it.

    Escalates to SIGKILL when it outlives ``timeout``; safe to call on a finished process.
    """
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
