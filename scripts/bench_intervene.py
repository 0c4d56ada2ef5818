"""Interventions on Fashion-MNIST: tree swap, head-only refit vs full tree fine-tuning, added class.

Prints one JSON object. CPU times are on one thread (``time.process_time``), so runs on a shared
machine compare; the full fine-tuning epoch is timed over ``--full-steps`` batches and scaled to
the epoch. Usage (a checkpoint from nbdt-train, e.g. ``--warmup-epochs 2 --epochs 0``)::

    .venv/bin/python scripts/bench_intervene.py --checkpoint /tmp/fm-base/last.pt
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import nbdt
from nbdt import data as datasets
from nbdt import intervene
from nbdt.loss import SoftTreeSupLoss


def cpu_seconds(fn, *args, **kwargs):
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def test_scores(model: nbdt.NBDT, test: intervene.Features) -> dict[str, float]:
    scores = intervene.evaluate_features(model, test.features, test.targets)
    return {k: round(v, 2) for k, v in scores.items() if k != "images"}


def full_epoch_seconds(model: nbdt.NBDT, train_set, steps: int, batch_size: int) -> dict:
    """CPU seconds of ``steps`` batches of tree fine-tuning of the whole network, and per epoch."""
    net = model.model
    net.train()
    transform = datasets.BatchTransform(model.data_config, augment=True)
    criterion = SoftTreeSupLoss(model.hierarchy, criterion=torch.nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True)
    start = time.process_time()
    for step, (images, targets) in enumerate(loader):
        if step == steps:
            break
        loss = criterion(net(transform(images)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.process_time() - start
    per_epoch = seconds / steps * math.ceil(len(train_set) / batch_size)
    net.eval()
    return {"steps_timed": steps, "seconds_timed": round(seconds, 2), "epoch_seconds": per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--subset", type=int, default=15000)
    parser.add_argument("--eval-subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full-steps", type=int, default=10)
    parser.add_argument("--add", default="Ankle boot")
    parser.add_argument("--shots", default="10,50,500")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model = nbdt.load(args.checkpoint)
    train_set = datasets.load_dataset("fashion-mnist", "train").head(args.subset)
    test_set = datasets.load_dataset("fashion-mnist", "test").head(args.eval_subset)
    train, cache_s = cpu_seconds(intervene.cache_features, model, train_set)
    test = intervene.cache_features(model, test_set)
    out: dict = {
        "checkpoint": args.checkpoint,
        "train_images": len(train),
        "test_images": len(test),
    }
    out["cache_features_seconds"] = round(cache_s, 2)

    # A realistic edit: the WordNet tree instead of the induced one; then the head refit.
    tree = nbdt.Hierarchy.wordnet(list(model.hierarchy.classes))
    swapped = model.with_hierarchy(tree)
    before = test_scores(swapped, test)
    stats, refit_s = cpu_seconds(
        intervene.refit_head, swapped, train.features, train.targets, epochs=args.epochs
    )
    out["tree_swap"] = {
        "model_tree": test_scores(model, test),
        "wordnet_tree_no_training": before,
        "wordnet_tree_head_refit": test_scores(swapped, test),
        "refit_epochs": args.epochs,
        "refit_seconds": round(refit_s, 2),
        "refit_steps": stats["steps"],
    }
    full = full_epoch_seconds(model.with_hierarchy(tree), train_set, args.full_steps, 128)
    out["full_tree_finetune_one_epoch"] = full
    out["head_refit_vs_full_epoch"] = round(full["epoch_seconds"] / max(refit_s, 1e-9), 1)
    out["head_refit_plus_cache_vs_full_epoch"] = round(
        full["epoch_seconds"] / max(refit_s + cache_s, 1e-9), 1
    )

    # Add a class back: drop it (its head row and its training images), refit, then add it.
    name = args.add
    index = model.hierarchy.classes.index(name)
    without = model.with_hierarchy(model.hierarchy.remove_class(name))
    keep = train.targets != index
    shifted = train.targets[keep] - (train.targets[keep] > index).long()
    intervene.refit_head(without, train.features[keep], shifted, epochs=args.epochs)
    test_keep = test.targets != index
    test_old = intervene.Features(
        test.features[test_keep], test.targets[test_keep] - (test.targets[test_keep] > index).long()
    )
    replay = intervene.Features(train.features[keep], shifted)
    images = train_set.images[train_set.targets == index]
    new_test = test.features[~test_keep]
    rows = []
    for shots in (int(s) for s in args.shots.split(",")):
        for refit in (False, True):
            grown, seconds = cpu_seconds(
                intervene.add_class,
                without,
                name,
                images[:shots],
                replay=replay if refit else None,
                epochs=args.epochs,
            )
            label = torch.full((len(new_test),), grown.hierarchy.num_classes - 1)
            rows.append(
                {
                    "shots": min(shots, len(images)),
                    "head_refit": refit,
                    "seconds": round(seconds, 2),
                    "new_class": test_scores(grown, intervene.Features(new_test, label)),
                    "old_classes": test_scores(grown, test_old),
                    "parent": grown.hierarchy.parent(grown.hierarchy.class_ids[-1]).label,
                }
            )
    out["add_class"] = {
        "class": name,
        "note": "the backbone saw this class in training (no --holdout-classes model yet)",
        "without_class_old_classes": test_scores(without, test_old),
        "all_classes_model_on_new_class": test_scores(
            model, intervene.Features(new_test, torch.full((len(new_test),), index))
        ),
        "runs": rows,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
