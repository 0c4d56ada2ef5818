"""nbdt-examples: the node-examples pass of a checkpoint over a dataset, written to one file.

Thin over :func:`nbdt.evidence.node_examples`; bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def examples_parser() -> argparse.ArgumentParser:
    from nbdt.data import DATASETS, SPLITS

    parser = argparse.ArgumentParser(
        prog="nbdt-examples",
        description="For every inner node and child of a model's tree: the training images it"
        " sends there most confidently and its typical mistakes (with 64-px thumbnails), plus a"
        " sample of pooled features for nearest-image search, saved as one .npz file.",
    )
    parser.add_argument("checkpoint", help="an nbdt model file (nbdt-train's best.pt)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", help="the dataset's folder (needed for 'folder')")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("-o", "--output", required=True, help="the .npz file to write")
    parser.add_argument("-k", type=_positive, default=8, help="images per node, child and kind")
    parser.add_argument(
        "--sample", type=_positive, default=4096, help="images kept for nearest-image search"
    )
    parser.add_argument("--batch-size", type=_positive, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    return parser


def _examples(args: argparse.Namespace) -> int:
    import nbdt
    from nbdt.data import load_dataset
    from nbdt.evidence import node_examples

    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist")
    model = nbdt.load(args.checkpoint)
    dataset = load_dataset(args.dataset, args.split, args.data_dir)
    if list(dataset.classes) != list(model.hierarchy.classes):
        raise ValueError(
            f"{args.dataset}: its {len(dataset.classes)} classes are not the model's"
            f" {model.hierarchy.num_classes} ({', '.join(model.hierarchy.classes[:3])}, ...)"
        )
    found = node_examples(
        model,
        dataset,
        k=args.k,
        sample=args.sample,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    found.save(output)
    print(f"nbdt-examples: wrote {output}", file=sys.stderr)
    return 0


def examples_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-examples CHECKPOINT --dataset NAME -o FILE."""
    from nbdt.cli import _run

    return _run("nbdt-examples", _examples, examples_parser(), argv)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
