#!/usr/bin/env bash
# Install, idempotently, what bench/peers.py needs and nothing the app or its tests use:
#   .venv/                 the app's virtualenv (deploy/setup.sh --app-only)
#   .venv-bench/           Celery, dramatiq and RQ with the Redis client (deploy/requirements-bench.txt)
#   .venv-bench/ours/      the Redis client alone, put on the local stack's PYTHONPATH for its task body
#   Debian package         redis-server (each run starts its own on a free port, without persistence)
# Usage: deploy/bench-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
deploy/setup.sh --app-only

pins() { sha256sum "$@" | sha256sum; }

if [ ! -f .venv-bench/.requirements.sha ] || [ "$(cat .venv-bench/.requirements.sha)" != "$(pins deploy/requirements-bench.txt deploy/requirements-bench-ours.txt)" ]; then
  [ -x .venv-bench/bin/python ] || "$python" -m venv .venv-bench
  .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/requirements-bench.txt
  rm -rf .venv-bench/ours
  .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check --target .venv-bench/ours \
    -r deploy/requirements-bench-ours.txt
  pins deploy/requirements-bench.txt deploy/requirements-bench-ours.txt > .venv-bench/.requirements.sha
fi

if ! command -v redis-server >/dev/null; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  # Only the binary is wanted: keep the package's own service from starting where an init system runs.
  "${sudo[@]}" env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null
fi
