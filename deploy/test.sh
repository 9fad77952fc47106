#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite against the real emulators.
# Extra arguments go to pytest: deploy/test.sh tests/core/test_db.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
exec .venv/bin/python -m pytest "$@"
