"""Accuracy of tree supervision on Fashion-MNIST at one fixed budget (resnet18 by default).

One cross-entropy warm-up trains the head; its checkpoint (with the hierarchy induced from that
head) then starts every variant, each fine-tuned for the same epochs with a fresh schedule:

- ``ce``: plain cross-entropy (the soft loss with ``tree_weight`` 0: the same loop, no tree term);
- ``soft-nll``: soft tree supervision, the label's negative log-likelihood under soft inference;
- ``soft-reference``: the reference implementation's soft loss (cross-entropy on probabilities);
- ``hard``: hard tree supervision, cross-entropy at each node on the label's path;
  these three with tree weight 1, to compare the losses;
- ``soft-nll-w2``, ``soft-nll-w4`` (nbdt-train's default), ``soft-nll-w8``: the chosen loss with
  heavier tree terms.

Reports network, NBDT-soft and NBDT-hard top-1 on the whole test split as JSON on stdout (the
runs' progress lines go to stderr).

    nohup .venv/bin/python scripts/bench_accuracy.py --subset 10000 > bench_accuracy.json &
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from nbdt._io import cache_dir
from nbdt.training.config import TrainConfig
from nbdt.training.run import train

VARIANTS = {
    "ce": {"loss": "soft", "tree_weight": 0.0},
    "soft-nll": {"loss": "soft", "soft_variant": "nll", "tree_weight": 1.0},
    "soft-reference": {"loss": "soft", "soft_variant": "reference", "tree_weight": 1.0},
    "hard": {"loss": "hard", "tree_weight": 1.0},
    **{
        f"soft-nll-w{w}": {"loss": "soft", "soft_variant": "nll", "tree_weight": float(w)}
        for w in (2, 4, 8)
    },
}
REPORTED = ("top1", "nbdt_soft_top1", "nbdt_hard_top1", "test_ce", "train_images_per_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--subset", type=int, default=None, help="first N training images")
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of each variant")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--output",
        type=Path,
        default=cache_dir() / "bench-accuracy",
        help="run folders (default: <cache>/bench-accuracy)",
    )
    args = p.parse_args()

    common = {
        "arch": args.arch,
        "data_dir": args.data_dir,
        "subset": args.subset,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "quiet": True,
        "overwrite": True,  # the bench's own folders: a rerun replaces the last one
    }
    started = time.perf_counter()
    results = {}
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
        warm = train(
            TrainConfig(
                output=str(args.output / "warmup"), warmup_epochs=args.warmup_epochs, epochs=0,
                **common,
            )
        )  # fmt: skip
        for name in args.variants:
            summary = train(
                TrainConfig(
                    output=str(args.output / name),
                    checkpoint=str(args.output / "warmup" / "last.pt"),
                    epochs=args.epochs,
                    **common,
                    **VARIANTS[name],
                )
            )
            metrics = (Path(summary["output"]) / "metrics.jsonl").read_text().splitlines()
            results[name] = {k: round(json.loads(metrics[-1])[k], 3) for k in REPORTED}
    result = {
        "arch": args.arch,
        "dataset": "fashion-mnist",
        "train_images": args.subset or 60000,
        "test_images": 10000,
        "warmup_epochs": args.warmup_epochs,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "after_warmup": {
            k: round(warm[k], 3) for k in ("top1", "nbdt_soft_top1", "nbdt_hard_top1")
        },
        "variants": results,
        "seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
