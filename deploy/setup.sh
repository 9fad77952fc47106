#!/usr/bin/env bash
# Install everything the app and its test suite need, idempotently:
#   .venv/                  the app's virtualenv (requirements-dev.txt)
#   .venv-tasks-emulator/   gcloud-tasks-emulator in its own virtualenv (it pins protobuf<5)
#   Debian packages         what the local stack needs (Java 17, the Cloud Datastore emulator) if missing;
#                           with the full setup also chromium (browser tests) and wrk (benchmarks)
# Usage: deploy/setup.sh [--app-only]
# Without apt-get (or without the emulator's package in apt's sources) it names what is missing and how
# to install it, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}

stamp_ok() {  # $1 venv, $2 requirements file: true when the venv already has exactly these pins
  [ -f "$1/.requirements.sha" ] && [ "$(cat "$1/.requirements.sha")" = "$(cat "$2" requirements.txt 2>/dev/null | sha256sum)" ]
}

make_venv() {  # $1 venv dir, $2 requirements file
  if ! stamp_ok "$1" "$2"; then
    [ -x "$1/bin/python" ] || "$python" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check -r "$2"
    cat "$2" requirements.txt 2>/dev/null | sha256sum > "$1/.requirements.sha"
  fi
}

apt_install() {  # Debian packages, as root or through sudo
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

emulator_found() {
  .venv/bin/python -c "from core.devserver.datastore_emulator import find_jar; assert find_jar().is_file()" \
    >/dev/null 2>&1
}

make_venv .venv requirements-dev.txt

# The local stack (python main.py, flask tasks run-local, the test plugin) needs Java 17 and the
# Cloud Datastore emulator of google-cloud-cli.
missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
emulator_found || missing+=(google-cloud-cli-datastore-emulator)
if [ "${1:-}" != "--app-only" ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v wrk >/dev/null || missing+=(wrk)
fi
installable=()
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; }; then
  for package in "${missing[@]}"; do  # only what apt's sources have (the emulator needs Google's repository)
    apt-cache show "$package" >/dev/null 2>&1 && installable+=("$package")
  done
fi
[ ${#installable[@]} -gt 0 ] && apt_install "${installable[@]}"
if ! command -v java >/dev/null || ! emulator_found; then
  cat >&2 <<'MSG'
setup: the local stack needs Java 17 and the Cloud Datastore emulator; still missing:
MSG
  command -v java >/dev/null || echo "  - Java 17: Debian/Ubuntu 'sudo apt-get install openjdk-17-jre-headless', macOS 'brew install openjdk@17'" >&2
  emulator_found || echo "  - the emulator: 'gcloud components install cloud-datastore-emulator' (google-cloud-cli), or Debian's 'google-cloud-cli-datastore-emulator' from Google's apt repository, or DATASTORE_EMULATOR_JAR=/path/to/CloudDatastore.jar" >&2
  exit 1
fi
[ "${1:-}" = "--app-only" ] && exit 0

make_venv .venv-tasks-emulator deploy/requirements-tasks-emulator.txt
