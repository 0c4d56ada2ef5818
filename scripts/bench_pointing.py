"""Are the heatmaps of explain(evidence=True) on the object, and faithful? Prints JSON.

For the step maps of the first N Fashion-MNIST test images, per CAM method:
- the pointing game (Zhang et al. 2016): the share of maps whose peak lies on the object (a pixel
  above 20 of 255; the background is 0), of the maps shown and of all maps; the share peaking at
  the corner pixel (0, 0); the maps with no localised evidence (empty, shown as such);
- the deletion test (nbdt.evidence.faithfulness): the share of steps whose margin falls more when
  the map's 20% most salient pixels are blurred than its 20% least salient ones;
- the sanity check (Adebayo et al. 2018): the mean Spearman correlation between the maps and
  those of the same architecture with random weights (near 0: the maps depend on the weights).

Usage: python scripts/bench_pointing.py CHECKPOINT [--images 500] [--methods hirescam,gradcam]
       [--layer L]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from bench_evidence import deletion_summary, randomised, sanity_summary

import nbdt
from nbdt.data import BatchTransform, load_dataset
from nbdt.evidence.saliency import DEFAULT_METHOD, decision_saliency, find_layer
from nbdt.networks import padding_of


def pointing(images: torch.Tensor, maps: list[list[np.ndarray]]) -> dict:
    """Pointing-game counts of the maps of uint8 (N, 1, H, W) images."""
    objects = images[:, 0].numpy() > 20
    peaks = [(b, heat) for b, steps in enumerate(maps) for heat in steps]
    shown = [(b, np.unravel_index(np.argmax(heat), heat.shape)) for b, heat in peaks if heat.any()]
    hits = sum(bool(objects[b][y, x]) for b, (y, x) in shown)
    corner = sum((y, x) == (0, 0) for _, (y, x) in shown)
    return {
        "step_maps": len(peaks),
        "no_localised_evidence": len(peaks) - len(shown),
        "peak_on_object_of_shown": round(hits / max(len(shown), 1), 4),
        "peak_on_object_of_all": round(hits / max(len(peaks), 1), 4),
        "peak_at_corner_of_shown": round(corner / max(len(shown), 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--methods", default=DEFAULT_METHOD, help="comma-separated CAM methods")
    parser.add_argument("--layer")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nbdt.load(args.checkpoint).eval()
    data = load_dataset("fashion-mnist", "test").head(args.images)
    batch = BatchTransform(model.data_config)(data.images)
    explanations = model.explain(batch)
    with torch.no_grad():
        accuracy = float((model(batch).argmax(1) == data.targets).float().mean())
    out = {
        "checkpoint": args.checkpoint,
        "images": len(data),
        "nbdt_soft_top1_on_these": round(100 * accuracy, 2),
        "padding": padding_of(model.model),
        "layer": find_layer(model, args.layer)[0],
    }
    twin = randomised(model)
    for method in args.methods.split(","):
        start = time.perf_counter()
        maps = decision_saliency(model, batch, explanations, method=method, layer=args.layer)
        random_maps = decision_saliency(twin, batch, explanations, method=method, layer=args.layer)
        out[method] = {
            **pointing(data.images, maps),
            "deletion": deletion_summary(model, batch, explanations, maps),
            "sanity": sanity_summary(maps, random_maps),
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
