#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one run, under 8 minutes on an H200 (each part has its own
# time limit, so a slow part costs only itself). Run from the repository root on a machine with CUDA:
#
#   bash benchmarks/gpu.sh                 # the real sizes
#   SMOKE=1 bash benchmarks/gpu.sh         # tiny sizes, any machine (CPU too): checks the script itself
#
# Prints, in order: the machine; the fused views checked against the reference path on this GPU
# (benchmarks/fused_check.py); the augmentation's views/s and the SimCLR step against the bare backbone
# at 3x32x32 and 3x64x64 (R18, bf16), with and without torch.compile (the backbone and the views), and at 3x32x32 with
# the fused views (train.fused_views, one Triton kernel per view, with and without train.fused_draws, against the
# unfused in the same run); the plain PyTorch peer loop against the engine's step; the engine's epoch at CIFAR
# shape eager, compiled and with the fused views drawing their parameters; every recipe's step
# (benchmarks/methods.py); gradient caching's peak memory against the batch; folder decoding (processes
# against threads, all cores); a streamed JPEG folder against the bare step.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "${SMOKE:-0}" = 1 ]; then
    B=32; B64=16; STEPS=2; WORK=2; REP=2; EPOCHS=0.02; GC="64 128"; GCM=32; DEC=200; STREAM="--images 256 --batch 32 --steps 2 --rounds 1"
    METHODS="--batch 32 --rounds 1 --block 1"; BACKBONE=convnet
else
    B=512; B64=256; STEPS=40; WORK=16; REP=9; EPOCHS=1; GC="512 2048 8192"; GCM=512; DEC=20000
    STREAM="--images 12288 --workers 16 --batch 256 --size 96 --backbone resnet18"; METHODS="--batch 256 --rounds 3"
    BACKBONE=resnet18
fi
part() {  # part SECONDS TITLE COMMAND...: a titled part under its own limit
    local limit=$1 title=$2; shift 2
    echo; echo "=== $title  ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | grep -v -e "Using bfloat16" -e "^INFO" || echo "(part ended: status $?)"
}
echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'cores', os.cpu_count())"
DEV=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

[ "$DEV" = cuda ] && part 150 "fused views against the reference path (compiled for this GPU)" \
    $PY benchmarks/fused_check.py $([ "${SMOKE:-0}" = 1 ] && echo "--images 8 --draws 2000")
for size in 32 64; do
    batch=$([ "$size" = 32 ] && echo $B || echo $B64)
    part 60 "step vs bare, $BACKBONE 3x${size}x${size}, batch $batch" \
        $PY benchmarks/step.py --device "$DEV" --backbone $BACKBONE --size $size --channels 3 --batch $batch --repeats $REP
    part 150 "step vs bare, compiled (backbone and views), $BACKBONE 3x${size}x${size}, batch $batch" \
        $PY benchmarks/step.py --device "$DEV" --backbone $BACKBONE --size $size --channels 3 --batch $batch --repeats $REP --compile
    [ "$DEV" = cuda ] && [ "$size" = 32 ] && part 90 "step vs bare, fused views (one Triton kernel per view), $BACKBONE 3x${size}x${size}, batch $batch" \
        $PY benchmarks/step.py --device "$DEV" --backbone $BACKBONE --size $size --channels 3 --batch $batch --repeats $REP --fused
    [ "$DEV" = cuda ] && [ "$size" = 32 ] && part 90 "step vs bare, fused views drawing their parameters, $BACKBONE 3x${size}x${size}, batch $batch" \
        $PY benchmarks/step.py --device "$DEV" --backbone $BACKBONE --size $size --channels 3 --batch $batch --repeats $REP --fused --fused-draws
done
part 90 "plain PyTorch peer loop vs the engine, $BACKBONE 3x32x32" \
    $PY benchmarks/peer.py --batch $B --steps $STEPS --workers $WORK --backbone $BACKBONE
MODES="eager compile"
# draws: train.fused_views and train.fused_draws; auto: train.compile unset (compiled if the run repays it)
[ "$DEV" = cuda ] && MODES="eager compile auto draws"
for mode in $MODES; do
    rm -rf /tmp/gpu_epoch_$mode  # a rerun on a warm machine: not refused as another run, nor its old figures printed
    part 120 "engine epoch at CIFAR shape (Fashion-MNIST as 3x32x32), $mode" \
        $PY -m selfsup pretrain recipes/simclr_fashion_mnist.yaml backbone.name=$BACKBONE data.size=32 data.channels=3 \
        train.batch_size=$B train.epochs=$EPOCHS train.knn_every=0 train.progress=false eval.plots=false \
        eval.floor=false $([ $mode = auto ] || echo train.compile=$([ $mode = compile ] && echo true || echo false)) \
        train.fused_views=$([ $mode = fused ] || [ $mode = draws ] && echo true || echo false) \
        train.fused_draws=$([ $mode = draws ] && echo true || echo false) name=gpu_epoch_$mode train.out_dir=/tmp/gpu_epoch_$mode
    $PY -c "import json; r = json.load(open('/tmp/gpu_epoch_$mode/results.json')); print('pretraining', r['pretrain_time_s'], 's,', r['images_per_s'], 'images/s, linear', r.get('linear_accuracy'), 'wall', r['wall_time_s'], 's', r.get('compile_plan', ''))" 2>/dev/null
done
part 90 "every recipe's step against SimCLR's" $PY benchmarks/methods.py $METHODS --device "$DEV"
part 90 "gradient caching: peak memory against the batch" \
    $PY benchmarks/grad_cache.py --batches $GC --micro $GCM --backbone $BACKBONE
part 60 "folder decoding: processes against threads" $PY benchmarks/decode.py --count $DEC
part 90 "streamed JPEG folder against the bare step" $PY benchmarks/stream.py $STREAM
echo; echo "=== done $(date +%T)"
