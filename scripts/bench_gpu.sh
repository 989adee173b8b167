#!/usr/bin/env bash
# Every GPU figure detcli promises, in one run on a machine with one NVIDIA GPU (a few minutes on an H100):
#   1. FCOS-R50 training img/s at 1024 x 1024 (the pixels of 800 x 1333), batch 8: fp32, bf16, bf16 + channels
#      last, and (step 5, last) bf16 + channels last + torch.compile; torchvision's FCOS measured beside each;
#      the achieved TFLOP/s from counted forward + backward FLOPs and the MFU against the GPU's dense peak;
#   2. YOLOX (against ultralytics' YOLOv8n, when installed) and Faster R-CNN (against torchvision's) in bf16;
#   3. peak memory and step time with and without gradient checkpointing, fp32 and bf16, for the three heads;
#   4. the training DataLoader's img/s on 800 px JPEGs (0 / 4 / 8 workers) beside the step rate;
# then one table of the headline ratios (scripts/bench_gpu_summary.py). The JSON of every run is in OUT.
#
#   scripts/bench_gpu.sh                  # on the GPU machine (OUT=runs/bench/gpu)
#   scripts/bench_gpu.sh --dry-run        # the same steps at toy sizes on the CPU (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/bench/gpu}
if [[ "${1:-}" == "--dry-run" ]]; then
  # the plumbing only: resnet18 for resnet50, one head's memory, tiny sizes
  DEV=cpu SIZE=64 BATCH=2 ITERS=1 ROUNDS=1 MEM_SIZE=64 MEM_BATCH=1 CANVAS=96 WORKERS="0" BATCHES=2 COMPILE=""
  R50=resnet18 MEM_HEADS="faster_rcnn"
  OUT=${OUT%/}_dry_run
else
  DEV=cuda SIZE=1024 BATCH=8 ITERS=${ITERS:-5} ROUNDS=${ROUNDS:-2} MEM_SIZE=800 MEM_BATCH=4 CANVAS=800
  WORKERS="0 4 8" BATCHES=20
  COMPILE="--compile" R50=resnet50 MEM_HEADS="fcos yolox faster_rcnn"
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: use --dry-run')"
fi
mkdir -p "$OUT"
train() { $PY scripts/bench_train.py --device "$DEV" --size "$SIZE" --batch "$BATCH" --iters "$ITERS" \
            --rounds "$ROUNDS" "$@"; }

echo "== 1. FCOS-$R50 training, $SIZE px, batch $BATCH"
train --backbone "$R50" --precision fp32 --out "$OUT/fcos_fp32.json"
train --backbone "$R50" --precision bf16 --out "$OUT/fcos_bf16.json"
train --backbone "$R50" --precision bf16 --channels-last --out "$OUT/fcos_bf16_cl.json"

echo "== 2. YOLOX and Faster R-CNN training, bf16 + channels last"
train --head yolox --precision bf16 --channels-last --out "$OUT/yolox_bf16_cl.json"
train --head faster_rcnn --backbone "$R50" --precision bf16 --channels-last --out "$OUT/faster_rcnn_bf16_cl.json"

echo "== 3. peak memory, gradient checkpointing off / on"
for head in $MEM_HEADS; do
  backbone=$R50; [[ $head == yolox ]] && backbone=cs3darknet_s
  $PY scripts/bench_memory.py --head "$head" --backbone "$backbone" --size "$MEM_SIZE" --batch "$MEM_BATCH" \
    --iters "$ITERS" --device "$DEV" --out "$OUT/memory_$head.json"
done

echo "== 4. the training data loader on ${CANVAS} px JPEGs"
# shellcheck disable=SC2086  # WORKERS is a list
$PY scripts/bench_data.py experiment=toy "data.canvas=$CANVAS" "data.image_size=$CANVAS" "data.num_train=64" \
  "data.batch_size=$BATCH" --workers $WORKERS --batches "$BATCHES" --out "$OUT/data.json"

if [[ -n "$COMPILE" ]]; then  # last: compiling takes a minute or more
  echo "== 5. FCOS-$R50 training, bf16 + channels last + torch.compile"
  train --backbone "$R50" --precision bf16 --channels-last --compile --out "$OUT/fcos_bf16_cl_compile.json" \
    || echo "torch.compile failed on this machine: that row is left out"
fi

$PY scripts/bench_gpu_summary.py "$OUT"
