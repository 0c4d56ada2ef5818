"""Cost of SoftTreeSupLoss's label range check: forward + backward with and without it.

Prints one JSON object: per class count (random binary trees, B = 256), the median process CPU
time in ms over interleaved repeats on one thread, and the ratio with / without the check.

    .venv/bin/python scripts/bench_label_check.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nbdt import builders
from nbdt.loss import SoftTreeSupLoss

BATCH = 256


def step(loss: SoftTreeSupLoss, logits: torch.Tensor, target: torch.Tensor) -> float:
    start = time.process_time()
    loss(logits, target).backward()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for classes in (10, 100, 1000):
        names = [f"c{i}" for i in range(classes)]
        tree = builders.build("random", names, wnids=[f"synthetic:c{i}" for i in range(classes)])
        loss = SoftTreeSupLoss(tree)
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(BATCH, classes, generator=generator, requires_grad=True)
        target = torch.randint(0, classes, (BATCH,), generator=generator)
        times: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(10):
            step(loss, logits, target)
        for _ in range(args.repeats):  # interleaved, so a slow spell hits both alike
            times["with"].append(step(loss, logits, target))
            loss._check_labels = lambda target, n: None  # this instance only
            times["without"].append(step(loss, logits, target))
            del loss._check_labels
        with_ms = statistics.median(times["with"]) * 1e3
        without_ms = statistics.median(times["without"]) * 1e3
        results[str(classes)] = {
            "with_check_ms": round(with_ms, 3),
            "without_check_ms": round(without_ms, 3),
            "ratio": round(with_ms / without_ms, 3),
        }
    print(json.dumps({"batch": BATCH, "threads": 1, "classes": results}, indent=1))


if __name__ == "__main__":
    main()
