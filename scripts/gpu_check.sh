#!/usr/bin/env bash
# GPU check of nbdt-train, for a machine with a CUDA GPU; run from anywhere:
#
#   bash scripts/gpu_check.sh [FASHION_MNIST_DIR]
#
# 1. 300 steps (resnet18, Fashion-MNIST, batch 128: 1 warm-up + 2 tree epochs of 100 steps) on
#    CUDA with bf16 autocast and channels_last, then the same on CPU in float32: per-epoch loss
#    curves and accuracies side by side, their largest difference, images/s of each;
# 2. scripts/bench_train.py on CUDA: the trainer's loop against a plain loop (goal >= 0.95);
# 3. torchrun with one process: the NCCL code path.
# Each step prints one JSON document. Needs torch with CUDA and nbdt's dependencies (the repo's
# .venv, or $PYTHON); the data folder defaults to Debian's (or carry a copy of it along).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
DATA=${1:-/usr/share/datasets/fashion-mnist}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/nbdt-gpu-check.XXXXXX")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check.sh: no CUDA device visible to torch"
import nbdt.train  # noqa: F401  (fails here, clearly, when a dependency is missing)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

train() {  # train DEVICE OUTPUT [extra args...]
  local device=$1 output=$2; shift 2
  "$PY" -c 'import sys; from nbdt.cli import train_main; sys.exit(train_main())' \
    --arch resnet18 --data-dir "$DATA" --subset 12800 --eval-subset 2000 --batch-size 128 \
    --warmup-epochs 1 --epochs 2 --lr 0.05 --seed 0 --quiet --device "$device" \
    --output "$output" "$@"
}

echo "== 1. CUDA (bf16 autocast) against CPU (float32), same 300 steps"
train cuda "$OUT/cuda"
train cpu "$OUT/cpu"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {d: [json.loads(l) for l in (out / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("cuda", "cpu")}
keys = ("train_loss", "test_loss", "top1", "nbdt_soft_top1", "nbdt_hard_top1")
curves = {d: {k: [round(r[k], 4) for r in rows] for k in keys} for d, rows in runs.items()}
diff = {k: max(abs(a - b) for a, b in zip(curves["cuda"][k], curves["cpu"][k])) for k in keys}
speed = {d: round(max(r["train_images_per_s"] for r in rows)) for d, rows in runs.items()}
print(json.dumps({"curves": curves, "max_abs_difference": diff, "train_images_per_s": speed,
                  "cuda_over_cpu": round(speed["cuda"] / speed["cpu"], 1)}, indent=1))
EOF

echo "== 2. trainer loop against a plain PyTorch loop on CUDA"
"$PY" scripts/bench_train.py --device cuda --data-dir "$DATA" --steps 50 --rounds 3 --batch-size 256

echo "== 3. torchrun, one process, NCCL"
"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 --no-python \
  "$PY" -c 'import sys; from nbdt.cli import train_main; sys.exit(train_main())' \
  --arch resnet18 --data-dir "$DATA" --subset 2560 --eval-subset 1000 --batch-size 128 \
  --warmup-epochs 1 --epochs 1 --quiet --output "$OUT/torchrun" 2>&1 | tail -n 6
echo "outputs in $OUT"
