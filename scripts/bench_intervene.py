"""Interventions on Fashion-MNIST: tree swap, head-only refit vs full tree fine-tuning, added class.

Prints one JSON object. CPU times are on one thread (``time.process_time``), so runs on a shared
machine compare; the full fine-tuning epoch is timed over ``--full-steps`` batches and scaled to
the epoch. Usage (a checkpoint from nbdt-train, e.g. ``--warmup-epochs 2 --epochs 0``)::

    nice -n 5 .venv/bin/python scripts/bench_intervene.py --checkpoint /work/ckpt/demo/best.pt \
        --holdout-checkpoint /work/ckpt/holdout-ankle/best.pt
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
from nbdt.features import Features, cache_features, pooled_features
from nbdt.heads import FeatureHead
from nbdt.loss import SoftTreeSupLoss


def cpu_seconds(fn, *args, **kwargs):
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def test_scores(model: nbdt.NBDT, test: Features) -> dict[str, float]:
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


def corrections_table(model: nbdt.NBDT, pool, train: Features, test: Features, epochs: int) -> dict:
    """Corrections: the pool's images the model gets wrong (test images outside the evaluated
    ones), filed under their right class; a quarter held out; test top-1 before and after."""
    features = pooled_features(model, pool.images)
    with torch.no_grad():
        logits = FeatureHead(model.model)(features)
    wrong = (logits.argmax(1) != pool.targets).nonzero().flatten()
    (_, report), seconds = cpu_seconds(
        intervene.correct, model, pool.images[wrong], pool.targets[wrong].tolist(),
        train.features, train.targets, test=test, epochs=epochs,
    )  # fmt: skip
    rounded = {
        when: {k: {m: round(v, 2) for m, v in d.items()} for k, d in report[when].items()}
        for when in ("before", "after")
    }
    return {
        "pool_images": len(pool), "corrections": len(wrong), "seconds": round(seconds, 2),
        **rounded,
    }  # fmt: skip


def add_class_table(
    holdout: nbdt.NBDT, full: nbdt.NBDT, train_set, test_set, name: str, shots: list[int],
    epochs: int,
) -> dict:  # fmt: skip
    """A class the backbone never saw (``--holdout-classes``), added from a few of its images."""
    index = train_set.classes.index(name)
    replay_set = intervene.known_classes(train_set, holdout.hierarchy)
    replay = cache_features(holdout, replay_set)
    old_test_set = intervene.known_classes(test_set, holdout.hierarchy)
    old = cache_features(holdout, old_test_set)
    new_images = test_set.images[test_set.targets == index]
    new = pooled_features(holdout, new_images)
    images = train_set.images[train_set.targets == index]
    full_test = cache_features(full, test_set)
    is_new = full_test.targets == index
    full_old = Features(full_test.features[~is_new], full_test.targets[~is_new])
    out = {
        "class": name,
        "test_images": {"new_class": len(new), "old_classes": len(old)},
        "holdout_model_old_classes": test_scores(holdout, old),
        "all_classes_model": {
            "new_class": test_scores(
                full, Features(full_test.features[is_new], full_test.targets[is_new])
            ),
            "old_classes": test_scores(full, full_old),
        },
        "runs": [],
    }
    for count in shots:
        for refit in (0, epochs):
            grown, seconds = cpu_seconds(
                intervene.add_class, holdout, name, images[:count], replay=replay, epochs=refit
            )
            label = torch.full((len(new),), grown.hierarchy.num_classes - 1)
            out["runs"].append(
                {
                    "shots": min(count, len(images)),
                    "head_refit_epochs": refit,
                    "seconds": round(seconds, 2),
                    "new_class": test_scores(grown, Features(new, label)),
                    "old_classes": test_scores(grown, old),
                    "parent": grown.hierarchy.parent(grown.hierarchy.class_ids[-1]).label,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a model trained with all classes")
    parser.add_argument("--holdout-checkpoint", help="the same, trained without --add")
    parser.add_argument("--subset", type=int, default=15000)
    parser.add_argument("--eval-subset", type=int, default=5000)
    parser.add_argument("--corrections-pool", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full-steps", type=int, default=10)
    parser.add_argument("--add", default="Ankle boot")
    parser.add_argument("--shots", default="10,50,500")
    parser.add_argument("--skip", default="", help="comma-separated: swap, corrections, add")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model = nbdt.load(args.checkpoint)
    full_train = datasets.load_dataset("fashion-mnist", "train")
    full_test = datasets.load_dataset("fashion-mnist", "test")
    train_set = full_train.head(args.subset)
    test_set = full_test.head(args.eval_subset)
    train, cache_s = cpu_seconds(cache_features, model, train_set)
    test = cache_features(model, test_set)
    out: dict = {
        "checkpoint": args.checkpoint,
        "train_images": len(train),
        "test_images": len(test),
        "cache_features_seconds": round(cache_s, 2),
        "model": test_scores(model, test),
    }

    if "swap" not in skip:
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
    if "corrections" not in skip:
        pool = datasets.TensorImages(
            full_test.images[args.eval_subset : args.eval_subset + args.corrections_pool],
            full_test.targets[args.eval_subset : args.eval_subset + args.corrections_pool],
            full_test.classes,
            full_test.wnids,
        )
        out["corrections"] = corrections_table(model, pool, train, test, args.epochs)
    if "add" not in skip:
        if args.holdout_checkpoint:
            holdout = nbdt.load(args.holdout_checkpoint)
        else:  # the class's row dropped and the head refit without its images
            holdout = model.with_hierarchy(model.hierarchy.remove_class(args.add))
            index = model.hierarchy.classes.index(args.add)
            keep = train.targets != index
            shifted = train.targets[keep] - (train.targets[keep] > index).long()
            intervene.refit_head(holdout, train.features[keep], shifted, epochs=args.epochs)
        shots = [int(s) for s in args.shots.split(",")]
        out["add_class"] = add_class_table(
            holdout, model, train_set, test_set, args.add, shots, args.epochs
        )
        out["add_class"]["backbone_saw_the_class"] = not args.holdout_checkpoint
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
