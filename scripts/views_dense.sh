#!/bin/bash
# The figures of docs/results/views_and_dense.md: Viewmaker and the dense methods against their baselines.
# A short CPU budget (the viewmaker network costs several times the encoder: about 60 images/s on 2
# cores): Fashion-MNIST as a seeded 4,096-image subset for 6 epochs, the colour photos (4,500) for 6;
# each run's floor is its own network at random initialisation. Resumable: a run whose results.json
# exists is skipped. Then the table: selfsup report --table docs/runs/views_dense/*.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/runs/views_dense}
SHORT="train.epochs=6 train.knn_every=0 train.progress=false"
FMNIST="data.max_samples=4096 $SHORT"
run() {  # name recipe overrides...
  local name=$1 recipe=$2; shift 2
  [ -f "$OUT/$name/results.json" ] && return
  $PY -m selfsup pretrain "recipes/$recipe.yaml" "$@" name="$name" train.out_dir="runs/views_dense/$name"
  mkdir -p "$OUT/$name"
  cp "runs/views_dense/$name/results.json" "runs/views_dense/$name/config.yaml" "$OUT/$name/"
  mkdir -p docs/results/img
  for f in views.png correspondence.png; do  # the pictures the page shows (docs/runs is not published)
    case "$name-$f" in
      viewmaker_*-views.png|simclr_fashion_mnist-views.png|simclr_photos-views.png|dense_object_net_*-correspondence.png)
        cp "runs/views_dense/$name/$f" "docs/results/img/$name-$f" ;;
    esac
  done
}
NOAUG="augment.view.scale=whole augment.view.jitter_p=0.0 augment.view.gray_p=0.0 augment.view.blur_p=0.0 augment.view.flip_p=0.0"
run dense_object_net_fashion_mnist dense_object_net_fashion_mnist $FMNIST
run densecl_fashion_mnist densecl_fashion_mnist $FMNIST
# Viewmaker against SimCLR with the hand-made views and with two identical views (every augmentation
# off), the same encoder, budget and batch of 64 (384 steps).
run simclr_fashion_mnist simclr_fashion_mnist $FMNIST train.batch_size=64
run simclr_no_augmentation_fashion_mnist simclr_fashion_mnist $FMNIST train.batch_size=64 $NOAUG
run viewmaker_fashion_mnist viewmaker_fashion_mnist $FMNIST train.batch_size=64
run dense_object_net_photos dense_object_net_photos $SHORT train.batch_size=64
run densecl_photos densecl_photos $SHORT train.batch_size=64
run simclr_photos simclr_fashion_mnist data.name=photos $SHORT train.batch_size=64
run simclr_no_augmentation_photos simclr_fashion_mnist data.name=photos $SHORT train.batch_size=64 $NOAUG
run viewmaker_photos viewmaker_photos $SHORT train.batch_size=64
$PY -m selfsup report --table "$OUT"/* --out docs/results/views_dense.md
