#!/usr/bin/env bash
# The test suite: set up, then run every test (learning checks and 2-process DDP tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_report.py renders the report page in headless Chromium. On a root Debian machine (CI)
# install Debian's when none is on PATH (about 30 s; once), so that test runs instead of skipping.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null || echo "scripts/test.sh: could not install chromium; tests/test_report.py skips its browser checks" >&2
fi
exec .venv/bin/python -m pytest -q --durations=15 "$@"
