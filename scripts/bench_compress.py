"""Export parity and compression of a trained Fashion-MNIST NBDT, as JSON.

For a checkpoint (e.g. ``runs/demo/best.pt``): export it to ONNX (time, parity with PyTorch),
then compare variants against that fp32 ONNX model on the first ``--test`` test images: int8
only, pruned only, pruned + int8 (no fine-tuning). Per variant: file size, parameters, MACs,
CPU latency (ONNX Runtime, one thread, CPU time, measured interleaved) at batch 1 and 64,
network / NBDT-soft / NBDT-hard top-1, and decision agreement with the fp32 model. With
``--imagenet`` it also measures the shipped ImageNet example's parity on skimage's photos.

    .venv/bin/python scripts/bench_compress.py runs/demo/best.pt --prune 0.3 --out compress.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nbdt
from nbdt import compress, data
from nbdt.export import export_onnx
from nbdt.runtime import OnnxNBDT

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "hubble_deep_field")


def parity(model: nbdt.NBDT, path: Path, batch: torch.Tensor) -> dict[str, float]:
    """Max |class log-prob| difference and the share of equal hard classes (= hard paths)."""
    out = OnnxNBDT(path).run(batch.numpy())
    with torch.no_grad():
        logits = model.logits(batch)
        soft, hard = model.rules.soft(logits).numpy(), model.rules.hard(logits).numpy()
    return {
        "max_abs_diff_class_log_probs": float(np.abs(out["class_log_probs"] - soft).max()),
        "hard_path_equal": float((out["hard_class"] == hard).mean()),
        "images": len(batch),
    }


def imagenet_parity(folder: Path) -> dict[str, float]:
    import skimage.data
    from PIL import Image

    from nbdt.pretrained import efficientnet_lite0, load_hierarchy_for
    from nbdt.wordnet import dataset_classes

    classes = dataset_classes("imagenet")
    tree = load_hierarchy_for("imagenet-induced", classes.names, classes.wnids)
    model = nbdt.NBDT(efficientnet_lite0(), tree, "soft", "marginal").eval()
    start = time.perf_counter()
    path = export_onnx(model, folder / "imagenet.onnx")
    seconds = time.perf_counter() - start
    images = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS]
    batch = torch.stack([model.transform(image) for image in images])
    return {"export_s": seconds, **parity(model, path, batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--prune", type=float, default=0.3, help="channel pruning ratio")
    parser.add_argument("--importance", default="magnitude", choices=compress.IMPORTANCES)
    parser.add_argument(
        "--round-to", type=int, default=8, metavar="N", help="keep channel counts multiples of N"
    )
    parser.add_argument("--global-pruning", action="store_true")
    parser.add_argument("--test", type=int, default=2000, help="test images compared")
    parser.add_argument("--calibration", type=int, default=256, help="training images")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--imagenet", action="store_true", help="also the ImageNet parity")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = nbdt.load(args.checkpoint)
    transform = data.BatchTransform(model.data_config)
    test = data.load_dataset("fashion-mnist", "test", args.data_dir)
    train = data.load_dataset("fashion-mnist", "train", args.data_dir)
    with torch.no_grad():
        inputs = transform(test.images[: args.test])
        calibration = transform(train.images[: args.calibration]).numpy()
    labels = test.targets[: args.test].numpy()
    batches = [calibration[i : i + 32] for i in range(0, len(calibration), 32)]

    result: dict[str, object] = {"checkpoint": args.checkpoint, "arch": model.arch}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        fp32 = export_onnx(model, folder / "fp32.onnx")
        result["export_s"] = time.perf_counter() - start
        result["parity"] = parity(model, fp32, inputs)
        if args.imagenet:
            result["imagenet_parity"] = imagenet_parity(folder)

        pruned = compress.prune(
            model,
            args.prune,
            importance=args.importance,
            global_pruning=args.global_pruning,
            round_to=args.round_to or None,
        )
        pruned_fp32 = export_onnx(pruned, folder / "pruned.onnx")
        files = {
            "fp32": fp32,
            "int8": compress.quantize_onnx(fp32, folder / "int8.onnx", batches),
            "pruned": pruned_fp32,
            "pruned_int8": compress.quantize_onnx(
                pruned_fp32, folder / "pruned-int8.onnx", batches
            ),
        }
        networks = {"fp32": model, "int8": model, "pruned": pruned, "pruned_int8": pruned}
        variants = compress.evaluate_onnx(files, inputs.numpy(), labels, reference="fp32")
        for name, row in variants.items():
            row["params"], row["macs"] = compress.parameters_and_macs(networks[name])
        result.update(
            prune=args.prune,
            importance=args.importance,
            global_pruning=args.global_pruning,
            test_images=len(labels),
            calibration_images=len(calibration),
            variants=variants,
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
