"""Train large, then compress, against training small: Fashion-MNIST NBDTs, as JSON.

Trains a small backbone (``--small``, resnet18) and a large one (``--large``, resnet50) with
nbdt-train's settings at about one CPU-time budget: the large one sees fewer training images
(``--subset`` times the ratio of the two networks' multiply-accumulates per image, unless
``--large-subset`` is given), the same epochs and seed; each run's CPU seconds are recorded.
Then nbdt-compress on both: the large one pruned to about the small one's parameter count
(channel pruning removes about ``1 - (1 - r)**2`` of a layer's weights, so
``r = 1 - sqrt(small / large)``), fine-tuned with the trainer's loop and decision distillation,
and quantised (static int8 and int8 weights); the small one quantised only. Per variant: file
size, parameters, MACs, CPU latency at batch 1 and 64 (ONNX Runtime, one thread), network /
NBDT-soft / NBDT-hard top-1 and decision agreement with its own uncompressed model.

    .venv/bin/python scripts/bench_compress.py --output runs/bench-compress \\
        --subset 15000 --warmup-epochs 2 --epochs 1 --finetune-epochs 2 --finetune-subset 15000
"""

from __future__ import annotations

import argparse
import json
import math
import resource
from pathlib import Path

import timm

from nbdt.cli.compress import main as compress_main
from nbdt.deploy.measure import network_parameters_and_macs, parameters_and_macs
from nbdt.model import load
from nbdt.training.config import TrainConfig
from nbdt.training.run import train

SIZE = (3, 28, 28)  # Fashion-MNIST as nbdt-train feeds it


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (data-loading workers)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usages)


def macs(arch: str) -> int:
    """Multiply-accumulates per 28 x 28 image of a fresh 10-class ``arch``."""
    return network_parameters_and_macs(timm.create_model(arch, num_classes=10), SIZE)[1]


def train_run(arch: str, subset: int, args: argparse.Namespace) -> dict[str, object]:
    """One nbdt-train run into ``output``/``arch``; its summary and CPU seconds."""
    config = TrainConfig(
        output=str(args.output / arch),
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        arch=arch,
        warmup_epochs=args.warmup_epochs,
        epochs=args.epochs,
        subset=subset,
        eval_subset=args.test,
        batch_size=args.batch_size,
        overwrite=True,
    )
    start = cpu_seconds()
    summary = train(config)
    return {"cpu_s": cpu_seconds() - start, "subset": subset, **summary}


def compress_run(checkpoint: Path, output: Path, extra: list[str], args) -> dict[str, object]:
    """nbdt-compress of ``checkpoint`` into ``output``; its compress.json and CPU seconds."""
    argv = [str(checkpoint), "-o", str(output), "--quantize", "int8", "int8-weights"]
    argv += ["--test", str(args.test), "--calibration", str(args.calibration), *extra]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    start = cpu_seconds()
    if compress_main(argv) != 0:
        raise SystemExit(f"nbdt-compress {' '.join(argv)} failed")
    report = json.loads((output / "compress.json").read_text())
    return {"cpu_s": cpu_seconds() - start, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--large", default="resnet50")
    parser.add_argument("--small", default="resnet18")
    parser.add_argument("--subset", type=int, default=15000, help="small model's train images")
    parser.add_argument("--large-subset", type=int, help="default: --subset x the MACs ratio")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-subset", type=int, default=5000)
    parser.add_argument("--distill", type=float, default=0.5, help="nbdt-compress --distill")
    parser.add_argument("--test", type=int, default=2000, help="test images compared")
    parser.add_argument("--calibration", type=int, default=256, help="training images")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    ops = {arch: macs(arch) for arch in (args.small, args.large)}
    large_subset = args.large_subset or round(args.subset * ops[args.small] / ops[args.large])
    result: dict[str, object] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    runs = {args.small: train_run(args.small, args.subset, args)}
    runs[args.large] = train_run(args.large, large_subset, args)
    best = {arch: args.output / arch / "best.pt" for arch in runs}
    params = {arch: parameters_and_macs(load(best[arch]))[0] for arch in runs}
    ratio = 1 - math.sqrt(params[args.small] / params[args.large])
    large = compress_run(
        best[args.large],
        args.output / f"{args.large}-compressed",
        ["--prune", f"{ratio:.3f}", "--finetune-epochs", str(args.finetune_epochs),
         "--finetune-subset", str(args.finetune_subset), "--distill", str(args.distill)],
        args,
    )  # fmt: skip
    small = compress_run(best[args.small], args.output / f"{args.small}-quantized", [], args)
    result.update(macs=ops, training=runs, prune_ratio=ratio, large=large, small=small)
    text = json.dumps(result, indent=1)
    print(text)
    (args.output / "bench_compress.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
