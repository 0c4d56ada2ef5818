"""Throughput of nbdt.evaluate against a plain ``model(x).argmax()`` loop over the same images.

Both read the same Fashion-MNIST test images (uint8, native 28x28 unless --size) through a
DataLoader of the same batch size, preprocess them the same way (the model's BatchTransform) and
run the same timm network on the same threads; evaluate() adds soft and hard inference and every
metric of docs/metrics.md. Time is the process's CPU time (one thread by default), so other work
on a shared machine does not count; rounds alternate between the two and the best round of each
counts. Prints JSON; the goal is evaluate / plain >= 0.9.

    .venv/bin/python scripts/bench_eval.py --arch resnet18 --images 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import nbdt
from nbdt import data
from nbdt.classes import dataset_classes
from nbdt.evaluation.evaluate import evaluate
from nbdt.model import NBDT


@torch.inference_mode()
def plain_loop(model: NBDT, dataset: data.TensorImages, batch_size: int) -> float:
    """Images/s of the textbook evaluation loop: preprocess, forward, argmax, count."""
    transform = data.BatchTransform(model.data_config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    model.eval()
    correct = count = 0
    start = time.process_time()
    for images, targets in loader:
        correct += int((model.logits(transform(images)).argmax(1) == targets).sum())
        count += len(targets)
    return count / (time.process_time() - start)


def nbdt_evaluate(model: NBDT, dataset: data.TensorImages, batch_size: int) -> float:
    start = time.process_time()
    result = evaluate(model, dataset, batch_size=batch_size)
    seconds = time.process_time() - start
    return result.metrics["images"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import timm

    classes = dataset_classes("fashion-mnist")
    dataset = data.load_dataset("fashion-mnist", "test").head(args.images)
    net = timm.create_model(args.arch, num_classes=len(classes))
    tree = nbdt.Hierarchy.induced(net, classes)
    model = NBDT(net, tree, data_config=data.data_config(net, (args.size, args.size)))
    evaluate(model, dataset.head(args.batch_size), batch_size=args.batch_size)  # warm up both
    plain_loop(model, dataset.head(args.batch_size), args.batch_size)
    plain, full = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(model, dataset, args.batch_size))
        full.append(nbdt_evaluate(model, dataset, args.batch_size))
    print(
        json.dumps(
            {
                "arch": args.arch,
                "images": len(dataset),
                "image_size": args.size,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "rounds": args.rounds,
                "plain_images_per_s": [round(x, 1) for x in plain],
                "evaluate_images_per_s": [round(x, 1) for x in full],
                "ratio_best": round(max(full) / max(plain), 3),
                "torch": torch.__version__,
                "machine": platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
