"""Evidence benchmarks and faithfulness checks; prints one JSON object.

(a) cost of the heatmaps of a 16-step path (efficientnet_lite0, 224 px, the shipped induced
ImageNet tree, "marginal" rules) against one plain forward+backward, CPU time on one thread;
(b) the deletion test on scikit-image's colour photos (ImageNet example) and on Fashion-MNIST test
images (a trained checkpoint); (c) the sanity check of Adebayo et al. (2018): Spearman rank
correlation between the maps of the trained model and of the same network with random weights;
(d) node-examples pass speed against a plain evaluation loop.

    python scripts/bench_evidence.py [--checkpoint runs/demo/best.pt] [--fm-images 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from nbdt.evidence.examples import node_examples
from nbdt.evidence.faithfulness import deletion_test
from nbdt.evidence.saliency import DEFAULT_METHOD, decision_saliency, find_layer
from nbdt.model import NBDT
from nbdt.networks import padding_of, set_padding

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def _cpu(fn, repeats: int = 5) -> float:
    """Median CPU seconds of ``fn()`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _imagenet_model() -> NBDT:
    from nbdt.classes import dataset_classes
    from nbdt.pretrained import efficientnet_lite0, load_hierarchy_for

    imagenet = dataset_classes("imagenet")
    tree = load_hierarchy_for("imagenet-induced", imagenet.names, imagenet.wnids)
    return NBDT(efficientnet_lite0(), tree, "soft", "marginal").eval()


def _path_of(model: NBDT, class_index: int) -> SimpleNamespace:
    """An explanation-like path to ``class_index``; runner-up: the first other child."""
    h = model.hierarchy
    nodes = h.path(class_index)
    steps = []
    for node, child in zip(nodes[:-1], nodes[1:], strict=False):
        other = next(c for c in node.children if c != child.id)
        steps.append(SimpleNamespace(node_id=node.id, child_id=child.id, runner_up_id=other))
    return SimpleNamespace(path=steps)


def cost(model: NBDT) -> dict:
    depth = model.rules.max_depth
    lengths = model.rules.path_length.tolist()
    target = lengths.index(max(lengths))
    path = _path_of(model, target)
    x = torch.randn(1, 3, 224, 224)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model.model(x).logsumexp(1).sum().backward()

    evidence_s = _cpu(lambda: decision_saliency(model, x, [path]))
    plain_s = _cpu(forward_backward)
    model.zero_grad(set_to_none=True)
    forward_s = _cpu(lambda: model.model(x.detach()).sum().item())
    explain_s = _cpu(lambda: model.explain(x, evidence=True))
    return {
        "steps": len(path.path),
        "tree_depth": depth,
        "method": DEFAULT_METHOD,
        "evidence_cpu_s": round(evidence_s, 4),
        "forward_backward_cpu_s": round(plain_s, 4),
        "forward_cpu_s": round(forward_s, 4),
        "ratio_to_forward_backward": round(evidence_s / plain_s, 3),
        "explain_evidence_cpu_s": round(explain_s, 4),
        "explain_evidence_ratio_to_forward_backward": round(explain_s / plain_s, 3),
    }


METHODS = ("gradcam", "hirescam")  # the package's first default, and the one that replaced it


def deletion_summary(model, batch, explanations, maps) -> dict:
    drops = deletion_test(model, batch, explanations, maps)
    salient, shifted, least = drops["salient"], drops["shifted"], drops["least"]
    return {
        "steps": int(len(salient)),
        "mean_drop": {k: round(float(v.mean()), 4) for k, v in drops.items()},
        "salient_beats_least": round(float((salient > least).mean()), 3),
        "salient_beats_shifted": round(float((salient > shifted).mean()), 3),
    }


def sanity_summary(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> dict:
    from scipy.stats import spearmanr

    rhos = []
    for maps_a, maps_b in zip(a, b, strict=True):
        for x, y in zip(maps_a, maps_b, strict=True):
            if x.std() > 0 and y.std() > 0:
                rhos.append(spearmanr(x.ravel(), y.ravel()).statistic)
    return {
        "maps_compared": len(rhos),
        "mean_spearman": round(float(np.mean(rhos)), 3) if rhos else None,
        "mean_abs_spearman": round(float(np.mean(np.abs(rhos))), 3) if rhos else None,
    }


def randomised(model: NBDT) -> NBDT:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(model.arch, pretrained=False, **model.model_kwargs).eval()
    set_padding(net, padding_of(model.model))  # the same architecture, random weights
    return NBDT(net, model.hierarchy, model.mode, model.node_score, data_config=model.data_config)


def photos(model: NBDT) -> tuple[dict, dict]:
    from PIL import Image
    from skimage import data

    used, images = [], []
    for name in PHOTOS:
        try:
            array = getattr(data, name)()
        except Exception:  # some photos are fetched on demand, which is offline here
            continue
        if array.ndim == 3 and array.shape[-1] >= 3:
            used.append(name)
            images.append(model.transform(Image.fromarray(array[..., :3])))
    batch = torch.stack(images)
    explanations = model.explain(batch)
    result: dict = {"photos": used}
    for method in METHODS:
        maps = decision_saliency(model, batch, explanations, method=method)
        result[method] = deletion_summary(model, batch, explanations, maps)
    maps = decision_saliency(model, batch, explanations)
    random_maps = decision_saliency(randomised(model), batch, explanations)
    return result, sanity_summary(maps, random_maps)


def fashion_mnist(checkpoint: str, count: int) -> tuple[dict, dict, dict]:
    import nbdt
    from nbdt.data import BatchTransform, load_dataset

    model = nbdt.load(checkpoint)
    test = load_dataset("fashion-mnist", "test")
    images = torch.stack([test[i][0] for i in range(count)])
    batch = BatchTransform(model.data_config)(images)
    explanations = model.explain(batch)
    deletion: dict = {"checkpoint": checkpoint, "images": count}
    deletion["layer"] = find_layer(model)[0]
    for method in METHODS:
        maps = decision_saliency(model, batch, explanations, method=method)
        deletion[method] = deletion_summary(model, batch, explanations, maps)
    maps = decision_saliency(model, batch, explanations)
    sanity = sanity_summary(maps, decision_saliency(randomised(model), batch, explanations))

    train = load_dataset("fashion-mnist", "train").head(2048)
    transform = BatchTransform(model.data_config)
    loader = torch.utils.data.DataLoader(train, batch_size=128)

    def plain():
        correct = 0
        with torch.no_grad():
            for x, y in loader:
                correct += (model(transform(x)).argmax(1) == y).sum().item()
        return correct

    plain_s = _cpu(plain, repeats=1)
    examples_s = _cpu(lambda: node_examples(model, train, k=8, batch_size=128), repeats=1)
    speed = {
        "images": len(train),
        "node_examples_images_per_s": round(len(train) / examples_s, 1),
        "eval_loop_images_per_s": round(len(train) / plain_s, 1),
        "ratio": round(examples_s / plain_s, 3),
    }
    return deletion, sanity, speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="a Fashion-MNIST nbdt checkpoint (make demo's best.pt)"
    )
    parser.add_argument("--fm-images", type=int, default=200)
    parser.add_argument("--skip-imagenet", action="store_true", help="Fashion-MNIST only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict = {"default_method": DEFAULT_METHOD}
    if not args.skip_imagenet:
        model = _imagenet_model()
        out["cost"] = cost(model)
        out["deletion_photos"], out["sanity_photos"] = photos(model)
    if args.checkpoint:
        fm = fashion_mnist(args.checkpoint, args.fm_images)
        out["deletion_fashion_mnist"], out["sanity_fashion_mnist"], out["node_examples_speed"] = fm
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
