#!/bin/bash
# Every study at its CPU setting, one run at a time, pages into docs/studies/ (about five hours on 2 cores).
# Each sweep is resumable: run this again after an interruption and only what is missing runs.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -f docs/studies/infonce_bound.json ] || $PY studies/infonce_bound.py
for study in projection_head loss_functions collapse augmentation batch_size pretext_vs_contrastive few_labels \
             vit_patch_projection densecl_match densecl_photos; do
  $PY -m selfsup sweep studies/$study.yaml --page docs/studies/$study.md
done
# The R3M study learns from the synthetic videos (with their captions).
[ -f runs/data/synthetic_videos/captions.csv ] || $PY benchmarks/make_videos.py runs/data/synthetic_videos
$PY -m selfsup sweep studies/r3m_language.yaml --page docs/studies/r3m_language.md
$PY -m selfsup sweep studies/r3m_budget.yaml --page docs/studies/r3m_budget.md
[ -f runs/data/synthetic_videos_2cam/captions.csv ] || $PY benchmarks/make_videos.py runs/data/synthetic_videos_2cam --views 2
$PY -m selfsup sweep studies/tcn_multiview.yaml --page docs/studies/tcn_multiview.md
[ -f runs/data/synthetic_videos_shared/labels.csv ] || $PY benchmarks/make_videos.py runs/data/synthetic_videos_shared --shared-colour
$PY -m selfsup sweep studies/colorization_input.yaml --page docs/studies/colorization_input.md
[ -f runs/data/synthetic_videos_task/tasks.csv ] || $PY benchmarks/make_videos.py runs/data/synthetic_videos_task --task
$PY -m selfsup sweep studies/tcn_task.yaml --page docs/studies/tcn_task.md
# The Jensen study measures a fixed encoder: the projection-head study's nonlinear SimCLR run, seed 0.
$PY studies/jensen.py --checkpoint runs/sweeps/projection_head/nonlinear/seed0/checkpoints/last.ckpt
