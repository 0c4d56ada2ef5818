"""Measure how well the inner nodes' names describe their classes, before and after display names.

For each tree: the share of inner nodes whose name equals their parent's, the number of distinct
names, and the name fit (F1 of recall = share of the node's classes under the name's concept and
precision = share of all the tree's classes under it that are in the node), for the lowest common
hypernym (the ``label``, what every output showed before) and for the display name
(:mod:`nbdt.labels`; a class-list name such as "Sandal or Sneaker" fits exactly). Prints JSON.

Usage: python scripts/bench_names.py [TREE.json ...]   (default: the shipped hierarchies)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from nbdt import wordnet as wn
from nbdt.hierarchy import Hierarchy
from nbdt.labels import given, name_nodes
from nbdt.tree import Tree

SHIPPED = sorted(Path(__file__).resolve().parent.parent.joinpath("hierarchies").glob("*.json"))


def lowest_common_fit(tree: Tree) -> list[float]:
    """Each inner node's fit of its lowest common hypernym (0 where it has none)."""
    columns, table = wn.hypernym_table([leaf.wnid or "" for leaf in tree.leaves])
    column = {c: k for k, c in enumerate(columns)}
    out = []
    for node in tree.inner_nodes:
        if node.wnid not in column:
            out.append(0.0)
            continue
        under = table[:, column[node.wnid]]
        hits = under[list(tree.leaf_indices(node.id))].sum()
        out.append(float(2 * hits / (len(tree.leaf_indices(node.id)) + under.sum())))
    return out


def describe(names: list[str], parents: list[str | None], fits: list[float]) -> dict:
    same = sum(p is not None and n == p for n, p in zip(names, parents, strict=True))
    return {
        "same_as_parent": round(same / len(names), 4),
        "distinct_names": len(set(names)),
        "fit_mean": round(statistics.mean(fits), 4),
        "fit_median": round(statistics.median(fits), 4),
    }


def measure(path: Path) -> dict:
    tree = Hierarchy.load(path)
    start = time.perf_counter()
    shown = name_nodes(tree)
    seconds = time.perf_counter() - start
    inner = tree.inner_nodes
    parent = [tree.parent(n.id) for n in inner]
    labels = [n.label for n in inner]
    display = [shown[n.id][0] for n in inner]
    display_fit = [shown[n.id][1] or 0.0 for n in inner]
    concept = [
        f
        for n, (text, f) in zip(inner, (shown[n.id] for n in inner), strict=True)
        if not given(n) and len(tree.leaf_indices(n.id)) > 3 and f
    ]
    return {
        "tree": str(path),
        "classes": tree.num_classes,
        "inner_nodes": len(inner),
        "naming_seconds": round(seconds, 3),
        "lowest_common_hypernym": describe(
            labels, [p.label if p else None for p in parent], lowest_common_fit(tree)
        ),
        "display_name": describe(
            display, [shown[p.id][0] if p else None for p in parent], display_fit
        ),
        "named_by_class_list": sum(
            len(tree.leaf_indices(n.id)) <= 3 and shown[n.id][0] != n.label for n in inner
        ),
        "concept_fit_over_4_classes_or_more": {
            "nodes": len(concept),
            "mean": round(float(np.mean(concept)), 4) if concept else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=SHIPPED)
    args = parser.parse_args()
    wn.wordnet()  # loading WordNet is not naming
    print(json.dumps([measure(path) for path in args.trees], indent=1))


if __name__ == "__main__":
    main()
