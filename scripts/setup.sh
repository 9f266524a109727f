#!/usr/bin/env bash
# Create .venv (once) and install selfsup with the pinned torch/torchvision pair. Idempotent.
# SELFSUP_EXTRAS picks the extras (default test,umap: everything the suite exercises; the main job
# needs only umap).
set -euo pipefail
cd "$(dirname "$0")/.."
# PYTHON=/path/to/python3.12 picks the interpreter (default: python3 on the PATH).
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "setup: selfsup needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>/dev/null || echo "missing")." \
             "Run again with PYTHON=/path/to/python3.11 (or newer)" >&2
        exit 1
    fi
    if ! "$PYTHON" -m venv .venv; then
        rm -rf .venv
        echo "setup: $PYTHON cannot create a virtual environment (on Debian/Ubuntu: sudo apt install" \
             "python3-venv, or python3.X-venv for your version), then run again" >&2
        exit 1
    fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
# The pinned pair first, so no other requirement can pull a different torch.
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e ".[${SELFSUP_EXTRAS:-test,umap}]"
