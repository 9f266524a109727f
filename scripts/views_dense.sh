#!/bin/bash
# The figures of docs/results/views_and_dense.md: Viewmaker and the dense methods against their baselines.
# Fashion-MNIST at the learning bar's budget (a seeded 8,192-image subset, 8 epochs, float32; the same
# floors as docs/results/bar.md), the colour photos at the recipes' own budget. Resumable: a run whose
# results.json exists is skipped. Then the table: selfsup report docs/runs/views_dense --table.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/runs/views_dense}
BAR="data.max_samples=8192 train.epochs=8 train.precision=32-true train.knn_every=0 train.progress=false"
run() {  # name recipe overrides...
  local name=$1 recipe=$2; shift 2
  [ -f "$OUT/$name/results.json" ] && return
  $PY -m selfsup pretrain "recipes/$recipe.yaml" "$@" name="$name" train.out_dir="runs/views_dense/$name"
  mkdir -p "$OUT/$name"
  for f in results.json config.yaml views.png correspondence.png; do
    [ -f "runs/views_dense/$name/$f" ] && cp "runs/views_dense/$name/$f" "$OUT/$name/"
  done
}
run viewmaker_fashion_mnist viewmaker_fashion_mnist $BAR
run simclr_no_augmentation_fashion_mnist simclr_fashion_mnist $BAR augment.recipe=none
run dense_object_net_fashion_mnist dense_object_net_fashion_mnist $BAR
run densecl_fashion_mnist densecl_fashion_mnist $BAR
run viewmaker_photos viewmaker_photos train.knn_every=0 train.progress=false
run simclr_photos simclr_fashion_mnist data.name=photos train.epochs=20 train.knn_every=0 train.progress=false
run simclr_no_augmentation_photos simclr_fashion_mnist data.name=photos train.epochs=20 train.knn_every=0 train.progress=false augment.recipe=none
run dense_object_net_photos dense_object_net_photos train.knn_every=0 train.progress=false
run densecl_photos densecl_photos train.knn_every=0 train.progress=false
