"""Regenerate the hierarchies shipped in hierarchies/: WordNet trees for the shipped class lists and
the ImageNet-1k tree induced from efficientnet_lite0's real ImageNet weights (offline).

Usage: python scripts/make_hierarchies.py [--out-dir DIR]   (default: the repository's hierarchies/)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nbdt import builders
from nbdt.classes import CLASS_LISTS, dataset_classes
from nbdt.pretrained import efficientnet_lite0

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "hierarchies")
    out_dir = parser.parse_args().out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {f"{name}-wordnet": builders.wordnet(dataset_classes(name)) for name in CLASS_LISTS}
    built["imagenet-induced"] = builders.induced(efficientnet_lite0(), dataset_classes("imagenet"))
    summary = {}
    for name, tree in built.items():
        tree.save(out_dir / f"{name}.json")
        named = sum(node.from_wordnet for node in tree.inner_nodes)
        summary[name] = {
            "classes": tree.num_classes,
            "inner_nodes": len(tree.inner_nodes),
            "named_by_wordnet": named,
            "depth": tree.max_depth,
        }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
