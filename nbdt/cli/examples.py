"""``nbdt-examples``: every node's representative and confused training images (an .npz)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nbdt.cli._common import (
    Parser,
    add_data_options,
    add_output,
    model_classes_of,
    non_negative_int,
    positive_int,
    resolve_data,
    run,
)


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-examples CHECKPOINT -o FILE: the node-examples pass on its own."""
    return run("nbdt-examples", _examples, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-examples' options."""
    p = Parser(
        prog="nbdt-examples",
        description="For every inner node and child of a model's tree: the training images it"
        " sends there most confidently and its typical mistakes (with 64-px thumbnails), plus a"
        " sample of pooled features for nearest-image search, saved as one .npz file.",
    )
    p.add_argument("checkpoint", help="an nbdt model file (nbdt-train's best.pt)")
    add_data_options(p, from_checkpoint=True, split="train")
    add_output(p, metavar="FILE.npz", help="the .npz file to write")
    p.add_argument(
        "-k", type=positive_int, default=8, help="images per node, child, kind (default: 8)"
    )
    p.add_argument(
        "--sample",
        type=positive_int,
        default=4096,
        help="images kept for nearest-image search (default: 4096)",
    )
    p.add_argument(
        "--subset", type=positive_int, metavar="N", help="the first N images only (default: all)"
    )
    p.add_argument("-b", "--batch-size", type=positive_int, default=128, help="(default: 128)")
    p.add_argument(
        "--workers", type=non_negative_int, default=0, help="DataLoader worker processes"
    )
    return p


def _examples(args: argparse.Namespace) -> int:
    from pathlib import Path

    import nbdt
    from nbdt.data import load_dataset
    from nbdt.evidence.examples import node_examples
    from nbdt.progress import Progress

    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist")
    resolve_data(args)
    model = nbdt.load(args.checkpoint)
    dataset = load_dataset(args.dataset, args.split, args.data_dir)
    if args.subset is not None:
        dataset = dataset.head(args.subset)
    try:
        dataset = model_classes_of(dataset, model, args.checkpoint)
    except ValueError as e:
        raise ValueError(f"{args.dataset}: {e}") from None
    found = node_examples(
        model,
        dataset,
        k=args.k,
        sample=args.sample,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=Progress(),
    )
    found.save(output)
    print(f"nbdt-examples: wrote {output}", file=sys.stderr)
    return 0
