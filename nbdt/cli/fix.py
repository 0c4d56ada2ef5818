"""nbdt-fix: correct a model's mistakes or add classes, refitting only its head.

A thin layer over :mod:`nbdt.intervene`: the replay is the cached features of a training set, the
corrections and new classes come from folders of images, and the result is one model file.
Every input is checked before the backbone runs; the model file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbdt.cli._common import (
    Parser,
    add_data_options,
    add_output,
    int_at_least,
    model_classes_of,
    resolve_data,
    run,
)

FALLBACK_DATASET = "fashion-mnist"  # for a model file that records no training run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-fix: see :func:`parser`."""
    return run("nbdt-fix", _fix, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-fix's options."""
    from nbdt.intervene import PLACES

    p = Parser(
        prog="nbdt-fix",
        description="Correct mistakes (--corrections) or add classes (--add-class) of an nbdt"
        " model by refitting only its classifier head on backbone features computed once; a"
        " replay of the training set's features keeps the other classes where they were."
        " Prints a summary (top-1 before and after; the full report with --json) and writes"
        " one model file.",
    )
    default = " (default: %(default)s)"
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="an nbdt model file (best.pt)")
    add_output(p, metavar="NEW.pt", help="the new model file")
    what = p.add_argument_group("what to fix")
    what.add_argument(
        "--corrections",
        metavar="DIR",
        help="DIR/<class>/<image>: images the model got wrong, filed under their right class",
    )
    what.add_argument(
        "--add-class",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a new class and a folder of its images (repeatable)",
    )
    what.add_argument(
        "--place",
        choices=PLACES,
        default="wordnet",
        help="a new leaf goes under its deepest WordNet hypernym in the tree, or (induced) next"
        " to the class of the most similar head row" + default,
    )
    what.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        metavar="SHARE",
        help="share of the corrections kept out of the fit to measure generalisation" + default,
    )
    data = p.add_argument_group("replay and test data")
    add_data_options(data, from_checkpoint=True, fallback=FALLBACK_DATASET)
    data.add_argument("--subset", type=int_at_least(1), metavar="N", help="first N training images")
    data.add_argument(
        "--eval-subset",
        type=int_at_least(0),
        metavar="N",
        help="first N test images for the report (0: no test report; default: all)",
    )
    fit = p.add_argument_group("head refit")
    fit.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=5,
        metavar="N",
        help="passes over the replay" + default,
    )
    fit.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate" + default)
    fit.add_argument(
        "-b", "--batch-size", type=int_at_least(1), default=512, metavar="N", help=default.strip()
    )
    fit.add_argument("--seed", type=int_at_least(0), default=0, help=default.strip())
    fit.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best present)")
    fit.add_argument(
        "--cache", metavar="DIR", help="keep replay features over 1 GiB on disk in DIR"
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return p


def _folder_class(folder: Path, hierarchy: Any) -> str:
    """The class a corrections folder is named after: its name, or a class name with each '/'
    (which no folder name can hold) written as '_' (``T-shirt_top`` for ``T-shirt/top``)."""
    from nbdt.intervene import class_indices

    by_folder = {name.replace("/", "_"): name for name in hierarchy.classes if "/" in name}
    name = by_folder.get(folder.name, folder.name)
    try:
        class_indices(hierarchy, [name])
    except ValueError as e:
        hint = " (name a class's folder with '_' for each '/': T-shirt/top -> T-shirt_top)"
        raise ValueError(f"--corrections {folder}: {e}{hint if by_folder else ''}") from None
    return name


def _images(folder: Path, option: str) -> list[Path]:
    """The image files of a folder (the suffixes torchvision's ImageFolder reads), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {folder}: no such folder of images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"{option} {folder}: holds no images ({', '.join(IMG_EXTENSIONS[:4])}...)")
    return files


def _additions(args: argparse.Namespace, hierarchy: Any) -> list[tuple[str, list[Path]]]:
    """``--add-class NAME=DIR`` entries: new names, folders with images."""
    from nbdt import wordnet
    from nbdt._messages import for_terminal
    from nbdt.intervene import check_new_class

    out: list[tuple[str, list[Path]]] = []
    for item in args.add_class:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder:
            raise ValueError(f"--add-class {item!r}: expected NAME=DIR")
        try:
            name = check_new_class(hierarchy, name)
        except ValueError as e:
            raise ValueError(f"--add-class {item!r}: {e}") from None
        if any(name.casefold() == done.casefold() for done, _ in out):
            raise ValueError(f"--add-class {item!r}: {name!r} is given twice")
        guess = wordnet.resolutions([name])[0]
        if guess.fallback:  # a guessed sense places the class: the user must see it
            print(
                f"nbdt-fix: note: --add-class {for_terminal(str(guess))}; name the class by its"
                " WordNet id (--add-class nXXXXXXXX=DIR) to place it otherwise",
                file=sys.stderr,
            )
        out.append((name, _images(Path(folder), "--add-class")))
    return out


def _corrections(args: argparse.Namespace, hierarchy: Any) -> tuple[list[Path], list[str]]:
    """``DIR/<class>/<image>``: the files and their classes, every class known to the model."""
    root = Path(args.corrections)
    if not root.is_dir():
        raise FileNotFoundError(f"--corrections {root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"--corrections {root}: no class folders (DIR/<class>/<image>)")
    files: list[Path] = []
    labels: list[str] = []
    for folder in folders:
        name = _folder_class(folder, hierarchy)
        found = _images(folder, "--corrections")
        files += found
        labels += [name] * len(found)
    return files, labels


def _rounded(value: Any) -> Any:
    """The report with floats to 4 decimals: what a person or a script needs of a top-1."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _top1(scores: dict[str, Any]) -> str:
    return f"network {scores['top1']:.1f}%, NBDT soft {scores['nbdt_soft_top1']:.1f}%"


def summary(report: dict[str, Any]) -> str:
    """nbdt-fix's report for a person: top-1 before and after, per image set and new class."""
    lines = [f"replay: {report['replay_images']} training images"]
    corrections = report.get("corrections")
    if corrections:
        lines.append("corrections, top-1 before -> after:")
        for name, before in corrections["before"].items():
            after = corrections["after"][name]
            lines.append(
                f"  {name:<12} {before['images']:>6} images  {_top1(before)} -> {_top1(after)}"
            )
    for added in report.get("added", []):
        line = (
            f"added {added['class']!r} under {added['parent']!r}: its {added['images']} images"
            f" {_top1(added['own_images'])}"
        )
        if "old_classes_test_before" in added:
            before, after = added["old_classes_test_before"], added["old_classes_test_after"]
            line += f"; old classes' test {_top1(before)} -> {_top1(after)}"
        lines.append(line)
    lines.append(f"wrote {report['output']}")
    return "\n".join(lines)


def _fix(args: argparse.Namespace) -> int:
    import math

    import torch

    import nbdt
    from nbdt import data as datasets
    from nbdt import intervene
    from nbdt.distributed import start_process
    from nbdt.features import Features, cache_features, pooled_features
    from nbdt.progress import Progress

    if not args.corrections and not args.add_class:
        raise ValueError("nothing to do: pass --corrections DIR and/or --add-class NAME=DIR")
    if not 0 <= args.holdout < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {args.holdout}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"--output {output}: the folder {output.parent} does not exist")
    resolve_data(args, FALLBACK_DATASET)
    device = start_process(args.device).device
    progress = Progress()

    model = nbdt.load(args.checkpoint).to(device)
    additions = _additions(args, model.hierarchy)
    corrections = _corrections(args, model.hierarchy) if args.corrections else None
    adding = [name for name, _ in additions]
    train_set = datasets.load_dataset(args.dataset, "train", args.data_dir)
    train_set = model_classes_of(train_set, model, args.checkpoint, adding)
    if args.subset:
        train_set = train_set.head(args.subset)
    test = None
    if args.eval_subset != 0:
        test_set = datasets.load_dataset(args.dataset, "test", args.data_dir)
        test_set = model_classes_of(test_set, model, args.checkpoint, adding)
        if args.eval_subset:
            test_set = test_set.head(args.eval_subset)
        test = cache_features(model, test_set, batch_size=args.batch_size, progress=progress)

    replay = cache_features(
        model, train_set, batch_size=args.batch_size, folder=args.cache, progress=progress
    )
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "replay_images": len(replay)}
    options = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    if corrections is not None:
        files, labels = corrections
        model, report["corrections"] = intervene.correct(
            model, files, labels, replay.features, replay.targets, holdout=args.holdout,
            test=test, **options,
        )  # fmt: skip
    for name, files in additions:
        before = (
            None
            if test is None
            else intervene.evaluate_features(model, test.features, test.targets)
        )
        model = intervene.add_class(model, name, files, args.place, replay=replay, **options)
        images = pooled_features(model, files)
        targets = torch.full((len(files),), model.hierarchy.num_classes - 1)
        added: dict[str, Any] = {
            "class": name,
            "images": len(files),
            "parent": model.hierarchy.parent(model.hierarchy.class_ids[-1]).label,
            "own_images": intervene.evaluate_features(model, images, targets),
        }
        if test is not None:
            added["old_classes_test_before"] = before
            added["old_classes_test_after"] = intervene.evaluate_features(
                model, test.features, test.targets
            )
        report.setdefault("added", []).append(added)
        # The next class's replay holds this one too.
        replay = Features(
            torch.cat([replay.features, images]), torch.cat([replay.targets, targets])
        )
    model.save(output)
    report["output"] = str(output)
    if args.json:
        json.dump(_rounded(report), sys.stdout, indent=1)
        print()
    else:
        print(summary(report))
    return 0
