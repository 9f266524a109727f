#!/bin/bash
# The figures of docs/results/video.md: TCN, R3M and video colorization on the synthetic videos of
# benchmarks/make_videos.py (120 videos of 24 frames, 64x64: 90 to train, 30 held out with their masks),
# once with a colour per sprite and once (the same videos) with a video's sprites in one colour,
# multi-view TCN on the same scenes seen by two cameras, and single-view TCN on demonstrations of one task,
# each then evaluated by `selfsup evaluate propagate` (J&F beside the random network, raw Lab colours and
# copying the first mask; propagation.png). Resumable: a run whose results.json is in docs/runs/video is
# skipped. Then the table: selfsup report --table docs/runs/video/* --out docs/results/video_runs.md.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/runs/video}
VIDEOS=runs/data/synthetic_videos
[ -f $VIDEOS/labels.csv ] || $PY benchmarks/make_videos.py $VIDEOS
SHARED=runs/data/synthetic_videos_shared
[ -f $SHARED/labels.csv ] || $PY benchmarks/make_videos.py $SHARED --shared-colour
TWO_CAMERAS=runs/data/synthetic_videos_2cam
[ -f $TWO_CAMERAS/labels.csv ] || $PY benchmarks/make_videos.py $TWO_CAMERAS --views 2
TASK=runs/data/synthetic_videos_task
[ -f $TASK/labels.csv ] || $PY benchmarks/make_videos.py $TASK --task
run() {  # name recipe overrides...
  local name=$1 recipe=$2; shift 2
  [ -f "$OUT/$name/results.json" ] && return
  $PY -m selfsup pretrain "recipes/$recipe.yaml" "$@" name="$name" train.out_dir="runs/video/$name" \
      train.progress=false --overwrite
  $PY -m selfsup evaluate propagate "runs/video/$name/checkpoints/last.ckpt"
  mkdir -p "$OUT/$name/evaluations" docs/results/img
  cp "runs/video/$name/results.json" "runs/video/$name/config.yaml" "$OUT/$name/"
  cp "runs/video/$name/evaluations/propagation.json" "$OUT/$name/evaluations/"
  cp "runs/video/$name/propagation.png" "docs/results/img/$name-propagation.png"
}
run video_colorization video_colorization_synthetic_videos
run video_colorization_lab_dropout video_colorization_synthetic_videos method_args.input=lab_dropout
run tcn tcn_synthetic_videos
run r3m r3m_synthetic_videos
run video_colorization_shared video_colorization_synthetic_videos data.root=$SHARED
run tcn_shared tcn_synthetic_videos data.root=$SHARED
run r3m_shared r3m_synthetic_videos data.root=$SHARED
run tcn_multiview tcn_multiview_synthetic_videos
run tcn_task tcn_synthetic_videos data.root=$TASK
# TCN on the two-camera scenes: multi-view (semi-hard triplets across the cameras) against single-view, with the
# batch's other videos as negatives and with its own video's only (docs/results/video.md).
run tcn_2cam_multi tcn_synthetic_videos data.root=$TWO_CAMERAS method_args.multi_view=true
run tcn_2cam_single tcn_synthetic_videos data.root=$TWO_CAMERAS method_args.across_videos=true
run tcn_2cam_single_own tcn_synthetic_videos data.root=$TWO_CAMERAS
$PY -m selfsup report --table "$OUT"/* --out docs/results/video_runs.md
