"""nbdt-fix: correct a model's mistakes or add classes, refitting only its head.

A thin layer over :mod:`nbdt.intervene`: the replay is the cached features of a training set, the
corrections and new classes come from folders of images, and the result is one model file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-fix: see :func:`parser`."""
    from nbdt.cli import _run

    return _run("nbdt-fix", _fix, parser(), argv)


def parser() -> argparse.ArgumentParser:
    from nbdt.data import DATASETS
    from nbdt.intervene import PLACES

    p = argparse.ArgumentParser(
        prog="nbdt-fix",
        description="Correct mistakes (--corrections) or add classes (--add-class) of an nbdt"
        " model by refitting only its classifier head on cached backbone features; a replay of"
        " the training set's features keeps the other classes where they were.",
    )
    p.add_argument("checkpoint", help="an nbdt model file")
    p.add_argument("-o", "--output", required=True, help="the new model file")
    p.add_argument("--corrections", metavar="DIR", help="DIR/<class>/<image>: right classes")
    p.add_argument(
        "--add-class",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a new class and a folder of its images (repeatable)",
    )
    p.add_argument("--place", choices=list(PLACES), default="wordnet", help="new leaves' place")
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="the replay")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--subset", type=int, metavar="N", help="first N training images as replay")
    p.add_argument("--cache", metavar="DIR", help="keep large replay features on disk here")
    p.add_argument("--holdout", type=float, default=0.25, help="share of corrections held out")
    p.add_argument("--epochs", type=int, default=5, help="passes over the replay")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def _images(folder: Path) -> list[Path]:
    """The image files of a folder (the suffixes torchvision's ImageFolder reads), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"{folder}: holds no images")
    return files


def _fix(args: argparse.Namespace) -> int:
    import torch

    import nbdt
    from nbdt import data as datasets
    from nbdt import intervene

    if not args.corrections and not args.add_class:
        raise ValueError("nothing to do: pass --corrections DIR and/or --add-class NAME=DIR")
    additions = []
    for item in args.add_class:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--add-class {item!r}: expected NAME=DIR")
        additions.append((name.strip(), _images(Path(folder))))
    if args.subset is not None and args.subset < 1:
        raise ValueError(f"--subset must be >= 1, got {args.subset}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist (--output)")

    model = nbdt.load(args.checkpoint)
    train_set = datasets.load_dataset(args.dataset, "train", args.data_dir)
    if args.subset:
        train_set = train_set.head(args.subset)
    if tuple(train_set.classes) != model.hierarchy.classes:
        raise ValueError(
            f"{args.checkpoint}: its classes are not the {args.dataset} classes (--dataset)"
        )
    replay = intervene.cache_features(model, train_set, folder=args.cache)
    report: dict = {}
    options = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    if args.corrections:
        folders = sorted(p for p in Path(args.corrections).iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{args.corrections}: no class folders (DIR/<class>/<image>)")
        files, labels = [], []
        for folder in folders:
            found = _images(folder)
            files += found
            labels += [folder.name] * len(found)
        model, report["corrections"] = intervene.correct(
            model, files, labels, replay.features, replay.targets, holdout=args.holdout, **options
        )
    for name, files in additions:
        model = intervene.add_class(model, name, files, args.place, replay=replay, **options)
        images = intervene.pooled_features(model, files)
        targets = torch.full((len(files),), model.hierarchy.num_classes - 1)
        scores = intervene.evaluate_features(model, images, targets)
        report.setdefault("added", []).append({"class": name, "images": len(files), **scores})
        # The next class's replay holds this one too.
        replay = intervene.Features(
            torch.cat([replay.features, images]), torch.cat([replay.targets, targets])
        )
    model.save(output)
    report["output"] = str(output)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
