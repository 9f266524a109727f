#!/usr/bin/env bash
# Create .venv (once) and install selfsup with the pinned torch/torchvision pair. Idempotent.
# SELFSUP_EXTRAS picks the extras (default test,umap: everything the suite exercises; the main job
# needs only umap).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
# The pinned pair first, so no other requirement can pull a different torch.
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e ".[${SELFSUP_EXTRAS:-test,umap}]"
