"""``nbdt-eval``: evaluate a checkpoint on a dataset and write ``eval.json`` and ``report.html``.

Thin over :func:`nbdt.evaluate.evaluate` and :func:`nbdt.report.report_html`; bad input is one
line on stderr and exit status 2, and the report and ``eval.json`` are written only once the
evaluation has succeeded, each atomically.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbdt.cli import BadInput, _non_negative_int, _run

DEVICES_HELP = "cuda, cuda:N, mps or cpu (default: cuda when available, else cpu)"


def eval_parser() -> argparse.ArgumentParser:
    from nbdt.data import DATASETS

    parser = argparse.ArgumentParser(
        prog="nbdt-eval",
        description="Hierarchy-aware evaluation of an NBDT checkpoint (docs/metrics.md).",
    )
    parser.add_argument("checkpoint", help="a model file of nbdt (best.pt, last.pt, nbdt.pt)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", help="the dataset's folder (default: the dataset's own)")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument(
        "--reference",
        help="hierarchy to measure distances on besides the model's: 'wordnet', 'none' or a"
        " hierarchy file (default: WordNet when every class has a WordNet id)",
    )
    parser.add_argument(
        "--holdout-classes",
        help="comma-separated classes the model never saw, routed through the tree (default:"
        " those in the run's args.json)",
    )
    parser.add_argument("--out", required=True, help="folder for eval.json and report.html")
    parser.add_argument("--no-report", action="store_true", help="write eval.json only")
    parser.add_argument("--subset", type=_non_negative_int, help="only the first N images")
    parser.add_argument("--batch-size", type=_non_negative_int, default=256)
    parser.add_argument("--workers", type=_non_negative_int, default=0)
    parser.add_argument("--device", help=DEVICES_HELP)
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    return _run("nbdt-eval", _eval, eval_parser(), argv)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from nbdt import data
    from nbdt.evaluate import evaluate
    from nbdt.model import load

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    if not args.batch_size:
        raise BadInput("--batch-size must be at least 1")
    run_folder = checkpoint.resolve().parent
    if not args.no_report:
        from nbdt.report import _pyplot

        _pyplot()  # a missing matplotlib stops here, before the evaluation
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(checkpoint).to(device)
    size = tuple(model.data_config["input_size"][-2:])
    dataset = data.load_dataset(args.dataset, args.split, args.data_dir, image_size=size)
    if args.subset is not None:
        dataset = dataset.head(args.subset)
    result = evaluate(
        model,
        dataset,
        reference=args.reference,
        holdout=_holdout(args.holdout_classes, run_folder),
        batch_size=args.batch_size,
        device=device,
        workers=args.workers,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not args.no_report:
        from nbdt.report import report_html

        history = _history(run_folder / "metrics.jsonl")
        written.append(report_html(result, out / "report.html", history=history))
    written.append(result.save(out / "eval.json"))
    _print_summary(result.metrics)
    for path in written:
        print(f"wrote {path}")
    return 0


def _holdout(option: str | None, run_folder: Path) -> list[str]:
    """The --holdout-classes names, else the run's args.json ``holdout_classes``."""
    if option is not None:
        return [name.strip() for name in option.split(",") if name.strip()]
    args_file = run_folder / "args.json"
    if not args_file.is_file():
        return []
    try:
        recorded = json.loads(args_file.read_text(encoding="utf-8")).get("holdout_classes")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{args_file}: not a JSON object ({e})") from None
    return list(recorded or [])


def _history(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a run's metrics.jsonl, or None when there is none (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON lines ({e})") from None
    return [row for row in rows if isinstance(row, dict)] or None


def _print_summary(metrics: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    print(f"{metrics['images']} images, {len(metrics['classes'])} classes")
    for name, v in metrics["variants"].items():
        ruler = v["hierarchy"]["reference" if "reference" in v["hierarchy"] else "model"]
        print(
            f"  {name:10s} top-1 {fmt(v['top1'])}%  top-{metrics['top_k']} {fmt(v['top5'])}%"
            f"  severity {fmt(ruler['mistake_severity'])}  hdist@1 {fmt(ruler['hdist@1'])}"
        )
    unseen = metrics.get("unseen")
    for row in (unseen or {}).get("classes", []):
        print(
            f"  {row['name']} -> {row['target']['label']}: NBDT {fmt(row['nbdt'])}%,"
            f" network {fmt(row['network'])}%"
        )
