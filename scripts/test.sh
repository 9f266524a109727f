#!/usr/bin/env bash
# The test suite: set up, then run every test (learning checks and 2-process DDP tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
