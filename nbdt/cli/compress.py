"""``nbdt-compress``: the flags of :func:`nbdt.deploy.compress.compress`, and its table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nbdt.cli._common import Parser, add_data_options, add_output, resolve_data, run

FALLBACK_DATASET = "fashion-mnist"  # for a model file that records no training run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-compress: prune and/or quantise an NBDT, and measure what it keeps."""
    return run("nbdt-compress", _compress, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-compress' options: one per keyword of :func:`nbdt.deploy.compress.compress`."""
    from nbdt.deploy.prune import IMPORTANCES
    from nbdt.deploy.quantize import ACTIVATION_TYPES, QUANTIZATIONS

    p = Parser(
        prog="nbdt-compress",
        description="Prune the network's channels (Torch-Pruning, head kept whole) and/or"
        " quantise the exported ONNX model to int8 (rules kept float32); write the results and"
        " compress.json comparing them with the uncompressed model on the test split.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="an nbdt model file")
    add_output(
        p,
        metavar="FOLDER",
        help="where the ONNX files, pruned.pt, finetune/ and compress.json go",
        folder=True,
    )
    p.add_argument("--prune", type=float, metavar="RATIO", help="channel ratio in (0, 1)")
    p.add_argument(
        "--importance", choices=IMPORTANCES, default="magnitude", help="(default: %(default)s)"
    )
    p.add_argument(
        "--round-to", type=int, default=8, metavar="N", help="keep channel counts multiples of N"
    )
    p.add_argument("--global-pruning", action="store_true", help="rank across layers")
    p.add_argument(
        "--finetune-epochs", type=int, default=0, metavar="N",
        help="tree-supervised fine-tuning epochs after pruning (nbdt-train's loop)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-subset", type=int, metavar="N", help="fine-tune on the first N train images"
    )
    p.add_argument(
        "-b", "--batch-size", type=int, default=64, metavar="N", help="fine-tuning batch"
    )
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (nbdt-train's)")
    p.add_argument(
        "--distill", type=float, default=0.5, metavar="SHARE",
        help="share of the fine-tuning loss given to decision distillation: the KL, at every"
        " inner node, from the uncompressed model's choice among the children to the pruned"
        " one's; the rest is the tree-supervision loss on the labels (default 0.5; 1: the"
        " uncompressed model's decisions alone; 0: the labels alone)",
    )  # fmt: skip
    p.add_argument(
        "--reinduce", action="store_true",
        help="induce the hierarchy again from the pruned model's head before fine-tuning",
    )  # fmt: skip
    kinds = "; ".join(f"{k}: {f.__doc__.strip()}" for k, f in QUANTIZATIONS.items())
    p.add_argument(
        "--quantize", nargs="+", choices=QUANTIZATIONS, metavar="KIND",
        help=f"quantise the (pruned) model's ONNX file, one file per KIND ({kinds})",
    )  # fmt: skip
    p.add_argument(
        "--activations", choices=ACTIVATION_TYPES, default="uint8",
        help="static int8's activation type (uint8: U8S8, fastest on x86 without VNNI)",
    )  # fmt: skip
    data = p.add_argument_group(
        "data", "the model's data: fine-tuning, calibration and the test comparison"
    )
    add_data_options(data, from_checkpoint=True, fallback=FALLBACK_DATASET)
    data.add_argument("--calibration", type=int, default=256, metavar="N", help="train images")
    data.add_argument("--test", type=int, default=2000, metavar="N", help="test images")
    return p


def _compress(args: argparse.Namespace) -> int:
    from nbdt.deploy.compress import compress
    from nbdt.progress import Progress

    resolve_data(args, FALLBACK_DATASET)
    settings = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "output")}
    result = compress(args.checkpoint, args.output, **settings, progress=Progress())
    print(result.table())
    warning = result.unfinetuned_warning(args.finetune_epochs)
    if warning:
        print(f"nbdt-compress: {warning}", file=sys.stderr)
    print(f"nbdt-compress: wrote {result.output}")
    return 0
