"""``nbdt-eval``: the hierarchy-aware evaluation of a checkpoint (eval.json, report.html)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nbdt.cli._common import (
    Parser,
    add_data_options,
    add_output,
    comma_list,
    non_negative_int,
    resolve_data,
    run,
)


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-eval: hierarchy-aware evaluation of a checkpoint, eval.json and report.html."""
    return run("nbdt-eval", _eval, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-eval's options."""
    p = Parser(
        prog="nbdt-eval",
        description="Hierarchy-aware evaluation of an NBDT checkpoint (metrics: docs/metrics.md):"
        " top-k, mistake severity, hierarchical distance, per-node accuracy, calibration, and"
        " where images of held-out classes go. Under torchrun the ranks share the images.",
    )
    p.add_argument("checkpoint", help="an nbdt model file (best.pt, last.pt, nbdt.pt)")
    add_data_options(p, from_checkpoint=True, split="test")
    p.add_argument(
        "--reference",
        metavar="wordnet|none|FILE",
        help="a second hierarchy to measure mistakes on (default: WordNet when every class has"
        " a WordNet id)",
    )
    p.add_argument(
        "--holdout-classes",
        type=comma_list,
        metavar="NAME[,NAME...]",
        help="classes the model never saw, routed through its tree (default: the run's, from"
        " args.json beside the checkpoint)",
    )
    add_output(
        p, metavar="DIR", help="where eval.json and report.html go", aliases=("--out",), folder=True
    )
    p.add_argument("--no-report", action="store_true", help="write eval.json only")
    p.add_argument("--subset", type=non_negative_int, metavar="N", help="first N images")
    p.add_argument(
        "-b", "--batch-size", type=non_negative_int, default=256, metavar="N", help="(default: 256)"
    )
    p.add_argument("--workers", type=non_negative_int, default=0, metavar="N", help="(default: 0)")
    p.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best present)")
    return p


def _eval(args: argparse.Namespace) -> int:
    """Evaluate, then (main process) write eval.json and the report: nothing before success."""
    from pathlib import Path

    import torch.distributed as dist

    from nbdt import data
    from nbdt._io import new_folder
    from nbdt.distributed import start_process
    from nbdt.evaluation.evaluate import evaluate
    from nbdt.model import load
    from nbdt.progress import Progress
    from nbdt.training.run_folder import RunFolder

    if not Path(args.checkpoint).is_file():
        raise ValueError(f"{args.checkpoint}: no such checkpoint file")
    if not args.batch_size:
        raise ValueError("--batch-size must be at least 1")
    resolve_data(args)
    run_folder = RunFolder(Path(args.checkpoint).parent, main=False)
    holdout = args.holdout_classes
    if holdout is None:
        holdout = (run_folder.recorded_args() or {}).get("holdout_classes") or []
    if not args.no_report:
        from nbdt.evaluation.report import pyplot

        pyplot()  # a missing matplotlib stops here, before the evaluation
    process = start_process(args.device)
    try:
        model = load(args.checkpoint).to(process.device)
        size = tuple(model.data_config["input_size"][-2:])
        dataset = data.load_dataset(args.dataset, args.split, args.data_dir, image_size=size)
        if args.subset is not None:
            dataset = dataset.head(args.subset)
        result = evaluate(
            model,
            dataset,
            reference=args.reference,
            holdout=holdout,
            batch_size=args.batch_size,
            device=process.device,
            workers=args.workers,
            progress=Progress(process.main),
        )
        if process.distributed:
            dist.barrier()  # leave the group together: no rank tears down under another's last step
    finally:
        if process.distributed:
            dist.destroy_process_group()
    if not process.main:
        return 0
    with new_folder(args.output):
        written = result.write(args.output, report=not args.no_report, history=run_folder.history())
    print(result.summary())
    for path in written:
        print(f"wrote {path}")
    return 0
