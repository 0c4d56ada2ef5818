"""``nbdt-compress``: prune, fine-tune and quantise a checkpoint, and compare the results."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from nbdt.cli._common import BadInput, load_model, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-compress: prune and/or quantise an NBDT, and measure what it keeps."""
    from nbdt.data import DATASETS
    from nbdt.deploy.prune import IMPORTANCES
    from nbdt.deploy.quantize import ACTIVATION_TYPES, QUANTIZATIONS

    parser = argparse.ArgumentParser(
        prog="nbdt-compress",
        description="Prune the network's channels (Torch-Pruning, head kept whole) and/or"
        " quantise the exported ONNX model to int8 (rules kept float32); write the results and"
        " compress.json comparing them with the uncompressed model on the test split.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="an nbdt model file")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FOLDER",
        help="where the ONNX files, pruned.pt, finetune/ and compress.json go",
    )  # fmt: skip
    parser.add_argument("--prune", type=float, metavar="RATIO", help="channel ratio in (0, 1)")
    parser.add_argument("--importance", choices=IMPORTANCES, default="magnitude")
    parser.add_argument(
        "--round-to", type=int, default=8, metavar="N", help="keep channel counts multiples of N"
    )
    parser.add_argument("--global-pruning", action="store_true", help="rank across layers")
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, metavar="N",
        help="tree-supervised fine-tuning epochs after pruning (nbdt-train's loop)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-subset", type=int, metavar="N", help="fine-tune on the first N train images"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="fine-tuning batch (64)"
    )
    parser.add_argument("--lr", type=float, help="fine-tuning learning rate (nbdt-train's)")
    parser.add_argument(
        "--distill", type=float, default=0.5, metavar="SHARE",
        help="share of the fine-tuning loss given to decision distillation: the KL, at every"
        " inner node, from the uncompressed model's choice among the children to the pruned"
        " one's; the rest is the tree-supervision loss on the labels (default 0.5; 1: the"
        " uncompressed model's decisions alone; 0: the labels alone)",
    )  # fmt: skip
    parser.add_argument(
        "--reinduce", action="store_true",
        help="induce the hierarchy again from the pruned model's head before fine-tuning",
    )  # fmt: skip
    kinds = "; ".join(f"{k}: {f.__doc__.strip()}" for k, f in QUANTIZATIONS.items())
    parser.add_argument(
        "--quantize", nargs="+", choices=QUANTIZATIONS, metavar="KIND",
        help=f"quantise the (pruned) model's ONNX file, one file per KIND ({kinds})",
    )  # fmt: skip
    parser.add_argument(
        "--activations", choices=ACTIVATION_TYPES, default="uint8",
        help="static int8's activation type (uint8: U8S8, fastest on x86 without VNNI)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=DATASETS,
        help="the model's data: fine-tuning, calibration and the test comparison (fashion-mnist)",
    )  # fmt: skip
    parser.add_argument("--data-dir", metavar="DIR", help="where --dataset's files are")
    parser.add_argument("--calibration", type=int, default=256, metavar="N", help="train images")
    parser.add_argument("--test", type=int, default=2000, metavar="N", help="test images")
    return run("nbdt-compress", _compress, parser, argv)


def _compress(args: argparse.Namespace) -> int:
    import torch

    from nbdt import data
    from nbdt.deploy.export import export_onnx
    from nbdt.deploy.measure import evaluate_onnx, parameters_and_macs
    from nbdt.deploy.prune import prune
    from nbdt.deploy.quantize import QUANTIZATIONS
    from nbdt.training.finetune import finetune

    if args.prune is None and args.quantize is None:
        raise BadInput("nothing to do: pass --prune RATIO and/or --quantize KIND")
    if args.prune is not None and not 0 < args.prune < 1:
        raise BadInput(f"--prune: the ratio must be between 0 and 1, got {args.prune}")
    if args.finetune_epochs < 0:
        raise BadInput(f"--finetune-epochs: must be >= 0, got {args.finetune_epochs}")
    if args.finetune_epochs and args.prune is None:
        raise BadInput("--finetune-epochs fine-tunes a pruned model: pass --prune RATIO")
    if not 0 <= args.distill <= 1:
        raise BadInput(f"--distill: a share between 0 and 1, got {args.distill}")
    if args.reinduce and not args.finetune_epochs:
        raise BadInput("--reinduce changes the tree the fine-tuning learns: pass --finetune-epochs")
    for option in ("calibration", "test"):
        if getattr(args, option) < 1:
            raise BadInput(f"--{option}: needs at least one image")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise BadInput(f"-o {output}: exists and is not a folder")
    model = load_model(args.checkpoint, None, None)
    transform = data.BatchTransform(model.data_config)
    test = data.load_dataset(args.dataset, "test", args.data_dir)
    with torch.no_grad():
        inputs = transform(test.images[: args.test]).numpy()
        labels = test.targets[: args.test].numpy()
        train = data.load_dataset(args.dataset, "train", args.data_dir)
        calibration = transform(train.images[: args.calibration]).numpy()
    batches = [calibration[i : i + 32] for i in range(0, len(calibration), 32)]

    output.mkdir(parents=True, exist_ok=True)
    files = {"uncompressed": export_onnx(model, output / "uncompressed.onnx")}
    networks = {"uncompressed": model}
    compressed = model
    if args.prune is not None:
        compressed = prune(
            model,
            args.prune,
            importance=args.importance,
            global_pruning=args.global_pruning,
            round_to=args.round_to or None,
        )
        compressed.save(output / "pruned.pt")
        if args.finetune_epochs:
            teacher = None if args.reinduce else model  # a new tree has no teacher's decisions
            config = _finetune_config(args, model, output)
            compressed, _ = finetune(config, teacher=teacher, distill=args.distill)
            compressed.save(output / "pruned.pt")
        files["pruned"] = export_onnx(compressed, output / "pruned.onnx")
        networks["pruned"] = compressed
    for kind in dict.fromkeys(args.quantize or ()):
        name = f"pruned_{kind}" if "pruned" in files else kind
        source = files.get("pruned", files["uncompressed"])
        quantizer = QUANTIZATIONS[kind]
        files[name] = quantizer(source, output / f"{name}.onnx", batches, args.activations)
        networks[name] = compressed
    rows = evaluate_onnx(files, inputs, labels, reference="uncompressed")
    for name, row in rows.items():
        row["params"], row["macs"] = parameters_and_macs(networks[name])
    from nbdt._io import write_text

    settings = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "output")}
    report = {
        "checkpoint": args.checkpoint,
        "settings": settings,
        "test_images": len(labels),
        "variants": rows,
    }
    write_text(output / "compress.json", json.dumps(report, indent=1) + "\n")
    print(_table(rows))
    print(f"nbdt-compress: wrote {output}")
    return 0


def _finetune_config(args: argparse.Namespace, model, output: Path):
    """nbdt-train's settings for fine-tuning ``output``/pruned.pt into ``output``/finetune."""
    from nbdt.training.config import TrainConfig

    size = model.data_config["input_size"]
    return TrainConfig(
        output=str(output / "finetune"),
        dataset=args.dataset,
        data_dir=args.data_dir,
        checkpoint=str(output / "pruned.pt"),
        hierarchy="induced" if args.reinduce else "checkpoint",
        node_score=model.node_score,
        warmup_epochs=0,
        epochs=args.finetune_epochs,
        subset=args.finetune_subset,
        eval_subset=args.test,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=size[-1] if args.dataset == "folder" and size[-1] == size[-2] else None,
        overwrite=True,
    )


def _table(rows: dict[str, dict]) -> str:
    """The comparison as a fixed-width text table."""
    header = (
        f"{'variant':<20}{'MB':>8}{'params':>11}{'MMACs':>9}{'ms@1':>8}{'ms@64':>9}"
        f"{'net%':>7}{'soft%':>7}{'hard%':>7}{'paths%':>8}"
    )
    lines = [header]
    for name, r in rows.items():
        lines.append(
            f"{name:<20}{r['file_bytes'] / 1e6:>8.2f}{r['params']:>11,}{r['macs'] / 1e6:>9.1f}"
            f"{r['latency_s_batch1'] * 1e3:>8.2f}{r['latency_s_batch64'] * 1e3:>9.1f}"
            f"{r['network_top1']:>7.2f}{r['nbdt_soft_top1']:>7.2f}{r['nbdt_hard_top1']:>7.2f}"
            f"{r['agreement']['path'] * 100:>8.2f}"
        )
    return "\n".join(lines)
