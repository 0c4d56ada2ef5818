"""The pointing game (Zhang et al. 2016) for explain(evidence=True) on Fashion-MNIST test images.

For every step map of the first N test images: does the map's peak lie on the object (a pixel
above 20 of 255; the background is 0)? Also the share of peaks at the corner pixel (0, 0), and
of maps with no localised evidence (all zero: nothing pushed towards the child taken). Prints
JSON.

Usage: python scripts/bench_pointing.py CHECKPOINT [--images 500] [--method hirescam] [--layer L]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import nbdt
from nbdt.data import BatchTransform, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--method", default="hirescam")
    parser.add_argument("--layer")
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nbdt.load(args.checkpoint).eval()
    data = load_dataset("fashion-mnist", "test").head(args.images)
    transform = BatchTransform(model.data_config)
    hits = corner = steps = empty = 0
    start = time.perf_counter()
    for first in range(0, len(data), args.batch):
        images = data.images[first : first + args.batch]
        explanations = model.explain(
            transform(images), evidence=True, method=args.method, layer=args.layer
        )
        for image, exp in zip(images, explanations, strict=True):
            obj = image[0].numpy() > 20
            for step in exp.path:
                steps += 1
                if step.saliency is None or step.saliency.max() <= 0:
                    empty += 1
                    continue
                y, x = np.unravel_index(np.argmax(step.saliency), step.saliency.shape)
                hits += bool(obj[y, x])
                corner += (y, x) == (0, 0)
    shown = steps - empty
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "images": len(data),
                "method": args.method,
                "layer": args.layer,
                "step_maps": steps,
                "no_localised_evidence": empty,
                "peak_on_object_of_shown": round(hits / max(shown, 1), 4),
                "peak_on_object_of_all": round(hits / max(steps, 1), 4),
                "peak_at_corner_of_shown": round(corner / max(shown, 1), 4),
                "seconds": round(time.perf_counter() - start, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
