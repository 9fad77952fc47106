"""Start and stop the Cloud Datastore emulator (the real one, from google-cloud-cli).

The JAR is started directly with a capped heap: the ``gcloud`` wrapper would leave Java running
when killed. ``--testing`` gives strong consistency, so queries see fresh writes.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from core.devserver.ports import free_port, port_is_open
from core.devserver.processes import stop_process_group

#: What to do when ``java`` is not on PATH (the local stack and the test plugin need the emulator).
JAVA_MISSING = ("java not found on PATH: the Cloud Datastore emulator needs Java 17. Install it "
                "(Debian/Ubuntu: `sudo apt-get install openjdk-17-jre-headless`; macOS: `brew install openjdk@17`) "
                "or run `deploy/setup.sh --app-only`, which installs it; the emulator itself comes with "
                "google-cloud-cli (`gcloud components install cloud-datastore-emulator`, or Debian's "
                "`google-cloud-cli-datastore-emulator` package). See Prerequisites in the README.")

JAR_RELATIVE = Path("platform/cloud-datastore-emulator/CloudDatastore.jar")
MAIN_CLASS = "com.google.cloud.datastore.emulator.CloudDatastore"


def find_jar() -> Path:
    """The emulator JAR: ``$DATASTORE_EMULATOR_JAR`` or inside the google-cloud-cli install."""
    explicit = os.environ.get("DATASTORE_EMULATOR_JAR")
    if explicit:
        return Path(explicit)
    candidates: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            if root:
                candidates.append(Path(root) / JAR_RELATIVE)
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(Path(os.path.realpath(gcloud)).parent.parent / JAR_RELATIVE)
    candidates += [Path("/usr/lib/google-cloud-sdk") / JAR_RELATIVE, Path("/google-cloud-sdk") / JAR_RELATIVE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RuntimeError("Cloud Datastore emulator not found: install google-cloud-cli with its emulator "
                       "(`gcloud components install cloud-datastore-emulator`, or Debian's "
                       "`google-cloud-cli-datastore-emulator` package) or set DATASTORE_EMULATOR_JAR to its "
                       "CloudDatastore.jar. See Prerequisites in the README.")


@dataclasses.dataclass
class DatastoreEmulator:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path | None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def reset(self) -> None:
        """Wipe every entity (the emulator's ``POST /reset``)."""
        request = urllib.request.Request(f"http://{self.host}/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stop(self) -> None:
        stop_process_group(self.process)
        if self.data_dir is not None and self.data_dir.name.startswith("datastore-emulator-"):
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_datastore_emulator(*, port: int | None = None, data_dir: Path | None = None,
                             persist: bool = False, timeout: float = 60.0,
                             heap_mb: int = 512) -> DatastoreEmulator:
    """Start the emulator on a free loopback port and wait until ``GET /`` answers ``Ok``.

    With ``persist`` the data stays in ``data_dir`` across restarts (the local dev server);
    otherwise it lives in memory. Raises ``RuntimeError`` (with the emulator's output) when it
    does not come up: callers fail, they never skip.
    """
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(JAVA_MISSING)
    port = port or free_port()
    if port_is_open(port):
        raise RuntimeError(f"port {port} is already in use")
    own_dir = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="datastore-emulator-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "emulator.log"
    base = [java, f"-Xmx{heap_mb}m", "-cp", str(find_jar()), MAIN_CLASS]
    args = base + ["start", "--host=127.0.0.1", f"--port={port}"]
    if persist:
        if not (data_dir / "WEB-INF").is_dir():
            subprocess.run(base + ["create", str(data_dir)], check=True, capture_output=True, timeout=120)
        args += ["--consistency=1.0", "--store_on_disk=true", str(data_dir)]
    else:
        args += ["--testing", str(data_dir)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    emulator = DatastoreEmulator(process, port, data_dir if own_dir else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.read().strip() == b"Ok":
                    return emulator
        except OSError:
            time.sleep(0.1)
    output = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    emulator.stop()
    raise RuntimeError(f"Datastore emulator did not start on port {port}:\n{output}")
