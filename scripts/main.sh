#!/usr/bin/env bash
# The main job: set up, fetch Fashion-MNIST, pretrain SimCLR briefly, evaluate, print accuracies.
# Extra arguments are key=value overrides, e.g. `bash scripts/main.sh train.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
SELFSUP_EXTRAS=umap bash scripts/setup.sh  # the main job needs none of the test extras (CLIP's, ONNX, graphs)
exec .venv/bin/selfsup pretrain recipes/simclr_fashion_mnist.yaml "$@"
