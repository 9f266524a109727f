#!/usr/bin/env bash
# The main job: set up, fetch Fashion-MNIST, pretrain SimCLR briefly, evaluate, print accuracies.
# Extra arguments are key=value overrides, e.g. `bash scripts/main.sh train.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/selfsup pretrain recipes/simclr_fashion_mnist.yaml "$@"
