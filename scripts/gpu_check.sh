#!/usr/bin/env bash
# GPU check of nbdt, for a machine with a CUDA GPU; run from anywhere:
#
#   bash scripts/gpu_check.sh [gpu_check.py options...]     (docs/gpu.md says what each number is)
#
# Prints JSON documents on stdout, progress on stderr:
# A. the mission's configuration, scripts/gpu_check.py (resnet101, 224 px, 1000 classes): training
#    throughput (plain loop / soft tree loss / nbdt-train's loop, eager and compiled, batch 128 and
#    the largest that fits), the JPEG input pipeline per worker count, evaluate / node examples /
#    explain with evidence / ONNX export against the CPU, torchrun over NCCL;
# B. only when the Fashion-MNIST files are there ($FASHION_MNIST_DIR, default Debian's folder):
#    1. 300 resnet18 steps on CUDA (bf16, channels_last) and on the CPU (float32): loss curves,
#       accuracies and images/s side by side; 2. scripts/bench_train.py on CUDA (goal >= 0.95);
#    3. nbdt-train under torchrun, one process (NCCL).
# Needs torch with CUDA and nbdt's dependencies ($PYTHON, else the repo's .venv, else python3);
# nbdt is imported from this repo. Wheels in a folder .whl of the repo (e.g. nltk, grad-cam and
# matplotlib for a machine without them) are installed into /tmp/site first, without the network.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
DATA=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/nbdt-gpu-check.XXXXXX")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
note() { echo "gpu_check.sh: $*" >&2; }

if compgen -G ".whl/*.whl" >/dev/null; then
  note "installing the wheels of .whl into /tmp/site"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl >&2; then
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    note "installing .whl/*.whl failed: going on without them"
  fi
fi

"$PY" - <<'EOF' >&2 || { note "no CUDA device or nbdt cannot be imported: stopping"; exit 1; }
import torch
assert torch.cuda.is_available(), "gpu_check.sh: no CUDA device visible to torch"
import nbdt.training.run  # noqa: F401  (fails here, clearly, when a dependency is missing)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

status=0
note "== A. the mission's configuration (scripts/gpu_check.py)"
"$PY" scripts/gpu_check.py --out "$OUT/mission" "$@" || status=1

if ! compgen -G "$DATA/*-images-idx3-ubyte*" >/dev/null \
    && ! compgen -G "$DATA/FashionMNIST/raw/*-images-idx3-ubyte*" >/dev/null; then
  note "Fashion-MNIST not found in $DATA: skipping sections B.1-3 (set FASHION_MNIST_DIR)"
  exit $status
fi

train() {  # train DEVICE OUTPUT [extra args...]; its progress lines go to stderr
  local device=$1 output=$2; shift 2
  "$PY" -c 'import sys; from nbdt.cli.train import main; sys.exit(main())' \
    --arch resnet18 --data-dir "$DATA" --subset 12800 --eval-subset 2000 --batch-size 128 \
    --warmup-epochs 1 --epochs 2 --lr 0.05 --seed 0 --quiet --device "$device" \
    --output "$output" "$@" >&2
}

note "== B.1. CUDA (bf16 autocast) against CPU (float32), same 300 steps"
if train cuda "$OUT/cuda" && train cpu "$OUT/cpu"; then
  "$PY" - "$OUT" <<'EOF' || status=1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {d: [json.loads(l) for l in (out / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("cuda", "cpu")}
keys = ("train_loss", "test_loss", "top1", "nbdt_soft_top1", "nbdt_hard_top1")
curves = {d: {k: [round(r[k], 4) for r in rows] for k in keys} for d, rows in runs.items()}
diff = {k: max(abs(a - b) for a, b in zip(curves["cuda"][k], curves["cpu"][k])) for k in keys}
speed = {d: round(max(r["train_images_per_s"] for r in rows)) for d, rows in runs.items()}
print(json.dumps({"section": "fashion_mnist_cuda_vs_cpu", "curves": curves,
                  "max_abs_difference": diff, "train_images_per_s": speed,
                  "cuda_over_cpu": round(speed["cuda"] / speed["cpu"], 1)}, indent=1))
EOF
else
  echo '{"section": "fashion_mnist_cuda_vs_cpu", "error": "nbdt-train failed (see stderr)"}'
  status=1
fi

note "== B.2. trainer loop against a plain PyTorch loop on CUDA"
"$PY" scripts/bench_train.py --device cuda --data-dir "$DATA" --steps 50 --rounds 3 \
  --batch-size 256 || { echo '{"section": "bench_train", "error": "failed (see stderr)"}'; status=1; }

note "== B.3. nbdt-train under torchrun, one process, NCCL"
if "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 --no-python \
    "$PY" -c 'import sys; from nbdt.cli.train import main; sys.exit(main())' \
    --arch resnet18 --data-dir "$DATA" --subset 2560 --eval-subset 1000 --batch-size 128 \
    --warmup-epochs 1 --epochs 1 --quiet --output "$OUT/torchrun" >&2; then
  "$PY" -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]
print(json.dumps({"section": "fashion_mnist_torchrun", "world_size": 1, "epochs": rows}, indent=1))' \
    "$OUT/torchrun/metrics.jsonl" || status=1
else
  echo '{"section": "fashion_mnist_torchrun", "error": "torchrun failed (see stderr)"}'
  status=1
fi
note "outputs in $OUT"
exit $status
