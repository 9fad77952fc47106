#!/usr/bin/env bash
# Install everything the app and its test suite need, idempotently:
#   .venv/                  the app's virtualenv (requirements-dev.txt)
#   .venv-tasks-emulator/   gcloud-tasks-emulator in its own virtualenv (it pins protobuf<5)
#   Debian packages         chromium (browser tests), wrk (benchmarks), Java 17 if missing
# Usage: deploy/setup.sh [--app-only]
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

make_venv .venv requirements-dev.txt
[ "${1:-}" = "--app-only" ] && exit 0

make_venv .venv-tasks-emulator deploy/requirements-tasks-emulator.txt

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
