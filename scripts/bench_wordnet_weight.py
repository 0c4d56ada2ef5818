"""The trade-off of the WordNet-aware induced hierarchy: accuracy, names, mistakes and unseen
classes for ``wordnet_weight`` 0 (the weights alone) to 1 (WordNet's grouping).

Fashion-MNIST: a frozen ImageNet backbone (efficientnet_lite0's real weights, offline; the images
upscaled to ``--image-size``) runs once over the training subset and the whole test set and its
pooled features are cached (:func:`nbdt.features.cache_features`). It saw no Fashion-MNIST image,
so no class is known to it, the held-out ones included. Each (weight, seed) point then trains
only the head, on the cached features, through the one epoch loop
(:func:`nbdt.intervene.refit_head`): a cross-entropy warm-up from a fresh head (one per seed,
shared by every weight), the hierarchy induced from that head with the weight, the head trained
on with the tree-supervision loss (soft, nbdt-train's tree weight), then
:func:`nbdt.evaluation.evaluate.evaluate` over the whole test set. A head on cached features is
the network with its backbone frozen: its logits are the network's on the images. Each point is
run twice: on all ten classes, and with Ankle boot and Pullover held out of training (the
unseen-class routing of ``nbdt-train --holdout-classes``, NBDT against the network baseline).

ImageNet (structure only): the trees induced from efficientnet_lite0's 1000-class head.

Per tree: name fit (mean over inner nodes of the display name's fit, :mod:`nbdt.labels`), the
share of inner nodes whose display name is their parent's, and the neighbour distance: for each
class, the mean WordNet distance (LCA height in the WordNet tree, the ruler of mistake severity)
to the other classes under its parent node, averaged over the classes. Prints JSON.

    nohup .venv/bin/python scripts/bench_wordnet_weight.py > bench_wordnet_weight.json &
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nbdt import data as datasets
from nbdt._io import cache_dir
from nbdt.classes import dataset_classes
from nbdt.evaluation.evaluate import evaluate
from nbdt.evaluation.rulers import align_reference, lca_tables, wordnet_reference
from nbdt.features import Features, cache_features
from nbdt.heads import head_rows, with_hierarchy
from nbdt.hierarchy import Hierarchy
from nbdt.intervene import refit_head
from nbdt.labels import name_nodes
from nbdt.model import NBDT
from nbdt.pretrained import efficientnet_lite0
from nbdt.training.config import TrainConfig

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
HOLDOUT = ("Ankle boot", "Pullover")
TREE_WEIGHT = TrainConfig.tree_weight  # nbdt-train's default


# ------------------------------------------------------------------------ tree structure
def structure(tree: Hierarchy) -> dict[str, Any]:
    """Name fit, share of display names equal to the parent's, neighbour distance (see above)."""
    shown = name_nodes(tree)
    inner = tree.inner_nodes
    fits = [shown[n.id][1] or 0.0 for n in inner]
    same = 0
    for node in inner:
        parent = tree.parent(node.id)
        same += parent is not None and shown[node.id][0] == shown[parent.id][0]
    reference = wordnet_reference(tree)
    position = align_reference(tree, reference)
    height = lca_tables(reference)[1][position][:, position].double()
    neighbour = []
    for c, leaf in enumerate(tree.leaves):
        others = [i for i in tree.leaf_indices(tree.parent(leaf.id).id) if i != c]
        neighbour.append(float(height[c, others].mean()))
    return {
        "inner_nodes": len(inner),
        "name_fit": round(statistics.mean(fits), 4),
        "same_name_as_parent": round(same / len(inner), 4),
        "neighbour_distance": round(statistics.mean(neighbour), 4),
    }


# ------------------------------------------------------------------------- Fashion-MNIST
class FeatureSet(torch.utils.data.TensorDataset):
    """Cached features with their targets and the dataset's class names and WordNet ids, as
    :func:`evaluate` reads a dataset (held-out classes are found by name)."""

    def __init__(self, features: Features, classes: Sequence[str], wnids: Sequence[str]):
        super().__init__(features.features, features.targets)
        self.classes, self.wnids = tuple(classes), tuple(wnids)


def fashion_features(args: argparse.Namespace) -> dict[str, Any]:
    """The frozen backbone's pooled features of the training subset and the test set, computed
    once and kept in ``--output`` (a rerun with the same settings reads them)."""
    path = args.output / f"features-{args.image_size}px-{args.subset}-{args.eval_subset}.pt"
    if path.exists() and not args.fresh:
        return torch.load(path, weights_only=True)
    train = datasets.load_dataset("fashion-mnist", "train", args.data_dir).head(args.subset)
    test = datasets.load_dataset("fashion-mnist", "test", args.data_dir).head(args.eval_subset)
    network = efficientnet_lite0()
    network.reset_classifier(len(test.classes))
    config = datasets.data_config(network, (args.image_size,) * 2)
    model = NBDT(network, Hierarchy.wordnet(test.classes), data_config=config)
    start = time.perf_counter()
    cached = {
        split: cache_features(model, dataset, batch_size=256)
        for split, dataset in (("train", train), ("test", test))
    }
    out = {
        "classes": list(test.classes),
        "wnids": list(test.wnids),
        "data_config": config,
        "seconds": time.perf_counter() - start,
        **{f"{split}_features": f.features for split, f in cached.items()},
        **{f"{split}_targets": f.targets for split, f in cached.items()},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def fashion_points(cached: dict[str, Any], args: argparse.Namespace, holdout: Sequence[str]):
    """One row per (weight, seed): the head warmed up per seed, each weight's tree from it."""
    names, wnids = cached["classes"], cached["wnids"]
    kept = [i for i, name in enumerate(names) if name not in holdout]
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[kept] = torch.arange(len(kept))
    keep = relabel[cached["train_targets"]] >= 0
    features = cached["train_features"][keep]
    targets = relabel[cached["train_targets"][keep]]
    classes = [names[i] for i in kept]
    class_wnids = [wnids[i] for i in kept]
    test = torch.utils.data.DataLoader(
        FeatureSet(Features(cached["test_features"], cached["test_targets"]), names, wnids),
        batch_size=1000,
    )
    fit = {"lr": args.lr, "batch_size": args.batch_size}
    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        network = nn.Sequential(nn.Linear(features.shape[1], len(kept)))  # the head alone
        start = Hierarchy.wordnet(classes, wnids=class_wnids)  # any tree: tree weight 0 = CE
        warm = NBDT(network, start, data_config=cached["data_config"])
        refit_head(
            warm, features, targets, epochs=args.warmup_epochs, seed=seed, tree_weight=0.0, **fit
        )
        for weight in args.weights:
            tree = Hierarchy.induced(
                head_rows(network)[0], classes, wordnet_weight=weight, wnids=class_wnids
            )
            model = with_hierarchy(warm, tree)
            refit_head(
                model,
                features,
                targets,
                epochs=args.epochs,
                seed=seed,
                tree_weight=TREE_WEIGHT,
                **fit,
            )
            rows.append(
                {
                    "wordnet_weight": weight,
                    "seed": seed,
                    **_evaluate(model, test, holdout),
                    **structure(tree),
                }
            )
            print(
                f"held out {list(holdout)} weight {weight} seed {seed}: NBDT-soft"
                f" {rows[-1]['nbdt_soft_top1']:.2f}%",
                file=sys.stderr,
            )
    return rows


def _evaluate(model: NBDT, test: Any, holdout: Sequence[str]) -> dict[str, Any]:
    metrics = evaluate(model, test, holdout=holdout).metrics
    variants = metrics["variants"]
    out = {
        "network_top1": variants["network"]["top1"],
        "nbdt_soft_top1": variants["nbdt_soft"]["top1"],
        "nbdt_soft_severity": variants["nbdt_soft"]["hierarchy"]["reference"]["mistake_severity"],
        "network_severity": variants["network"]["hierarchy"]["reference"]["mistake_severity"],
    }
    if metrics["unseen"]:
        out["unseen"] = {
            row["name"]: {k: row[k] for k in ("nbdt", "network")}
            for row in metrics["unseen"]["classes"]
        }
        out["unseen"]["overall"] = {k: metrics["unseen"]["overall"][k] for k in ("nbdt", "network")}
    return out


# ------------------------------------------------------------------------------ ImageNet
def imagenet_rows(weights: Sequence[float]) -> list[dict[str, Any]]:
    """The structure of the trees induced from efficientnet_lite0's ImageNet head."""
    network, classes = efficientnet_lite0(), dataset_classes("imagenet")
    rows = []
    for weight in weights:
        start = time.perf_counter()
        tree = Hierarchy.induced(network, classes, wordnet_weight=weight)
        built = time.perf_counter() - start
        rows.append({"wordnet_weight": weight, "build_seconds": round(built, 1), **structure(tree)})
        print(f"imagenet weight {weight}: {rows[-1]}", file=sys.stderr)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per weight: the mean over seeds of every number (held-out ones per class)."""
    out: dict[str, dict[str, Any]] = {}
    for weight in sorted({r["wordnet_weight"] for r in rows}):
        mine = [r for r in rows if r["wordnet_weight"] == weight]
        flat = [_flatten(r) for r in mine]
        out[str(weight)] = {
            k: round(statistics.mean(f[k] for f in flat), 3)
            for k in flat[0]
            if k not in ("wordnet_weight", "seed") and all(f.get(k) is not None for f in flat)
        }
    return out


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--subset", type=int, default=10000, help="first N training images")
    p.add_argument("--eval-subset", type=int, default=10000, help="first N test images")
    p.add_argument("--image-size", type=int, default=64, help="Fashion-MNIST images upscaled to")
    p.add_argument("--warmup-epochs", type=int, default=20, help="cross-entropy head epochs")
    p.add_argument("--epochs", type=int, default=20, help="tree-supervision head epochs")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the head")
    p.add_argument("--batch-size", type=int, default=1024, help="of the head's training")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--no-imagenet", action="store_true", help="skip the ImageNet trees")
    p.add_argument("--fresh", action="store_true", help="recompute the cached features")
    cached_in = cache_dir() / "bench-wordnet-weight"
    p.add_argument(
        "--output", type=Path, default=cached_in, help=f"features (default: {cached_in})"
    )
    args = p.parse_args()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
        cached = fashion_features(args)
        torch.set_num_threads(1)  # head steps are tiny: a second thread measured 2.5x slower
        points = {"all_classes": fashion_points(cached, args, ())}
        points["holdout"] = fashion_points(cached, args, HOLDOUT)
        imagenet = [] if args.no_imagenet else imagenet_rows(args.weights)
    result = {
        "backbone": "tf_efficientnet_lite0 (ImageNet weights, frozen)",
        "image_size": args.image_size,
        "train_images": len(cached["train_targets"]),
        "test_images": len(cached["test_targets"]),
        "holdout_classes": list(HOLDOUT),
        "warmup_epochs": args.warmup_epochs,
        "epochs": args.epochs,
        "tree_weight": TREE_WEIGHT,
        "seeds": args.seeds,
        "feature_seconds": round(cached["seconds"]),
        "fashion_mnist": {name: summarise(rows) for name, rows in points.items()},
        "fashion_mnist_runs": points,
        "imagenet": imagenet,
        "seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
