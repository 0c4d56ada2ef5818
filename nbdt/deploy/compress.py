"""The compression pipeline behind ``nbdt-compress``: prune, optionally fine-tune, export,
quantise, then measure every variant against the uncompressed model through ONNX Runtime.

One call writes a folder (the ONNX files, ``pruned.pt``, ``finetune/``, ``compress.json``) and
returns the measurements; the command line only parses flags and prints the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdt.choices import check_choice
from nbdt.progress import Progress

if TYPE_CHECKING:
    from nbdt.model import NBDT
    from nbdt.training.config import TrainConfig


@dataclass(frozen=True)
class Compressed:
    """What :func:`compress` wrote and measured.

    ``files`` maps each variant ("uncompressed", "pruned", "int8", "pruned_int8", ...) to its
    ONNX file; ``rows`` holds each variant's measurements, as ``compress.json``'s "variants";
    ``notes`` what the user must know about them (the share pruning achieved).
    """

    output: Path
    files: dict[str, Path]
    rows: dict[str, dict[str, Any]]
    notes: tuple[str, ...] = ()

    def table(self) -> str:
        """The comparison as a fixed-width text table, one line per variant."""
        header = (
            f"{'variant':<20}{'MB':>8}{'params':>11}{'MMACs':>9}{'ms@1':>8}{'ms@64':>9}"
            f"{'net%':>7}{'soft%':>7}{'hard%':>7}{'paths%':>8}"
        )
        lines = [header]
        for name, r in self.rows.items():
            lines.append(
                f"{name:<20}{r['file_bytes'] / 1e6:>8.2f}{r['params']:>11,}"
                f"{r['macs'] / 1e6:>9.1f}{r['latency_s_batch1'] * 1e3:>8.2f}"
                f"{r['latency_s_batch64'] * 1e3:>9.1f}{r['network_top1']:>7.2f}"
                f"{r['nbdt_soft_top1']:>7.2f}{r['nbdt_hard_top1']:>7.2f}"
                f"{r['agreement']['path'] * 100:>8.2f}"
            )
        return "\n".join([*lines, *self.notes])

    def unfinetuned_warning(self, finetune_epochs: int, tolerance: float = 1.0) -> str | None:
        """A loud note when pruning without fine-tuning (``finetune_epochs`` 0) lost more than
        ``tolerance`` points of NBDT soft top-1, with the drop measured: such a model is rarely
        fit for use, and nothing else would say so. None otherwise."""
        if finetune_epochs or "pruned" not in self.rows:
            return None
        before, after = self.rows["uncompressed"], self.rows["pruned"]
        drop = before["nbdt_soft_top1"] - after["nbdt_soft_top1"]
        if drop <= tolerance:
            return None
        return (
            f"WARNING: pruned without fine-tuning (--finetune-epochs 0), the model lost"
            f" {drop:.1f} points of NBDT soft top-1 ({before['nbdt_soft_top1']:.1f}% ->"
            f" {after['nbdt_soft_top1']:.1f}%) and keeps {after['agreement']['path'] * 100:.1f}%"
            " of decision paths: fine-tune it (--finetune-epochs 2 or more) before using"
            f" {self.output / 'pruned.pt'}"
        )


def compress(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    prune: float | None = None,
    importance: str = "magnitude",
    round_to: int = 8,
    global_pruning: bool = False,
    finetune_epochs: int = 0,
    finetune_subset: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    distill: float = 0.5,
    reinduce: bool = False,
    quantize: Sequence[str] | None = None,
    activations: str = "uint8",
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    calibration: int = 256,
    test: int = 2000,
    progress: Progress | None = None,
) -> Compressed:
    """Compress the nbdt model file ``checkpoint`` into the folder ``output`` and compare.

    ``prune`` (a channel ratio in (0, 1)) prunes the network with Torch-Pruning
    (:func:`nbdt.deploy.prune.prune`: ``importance``, ``global_pruning``, ``round_to``; the head
    stays whole) into ``pruned.pt``; ``finetune_epochs`` then fine-tunes it with the trainer's
    loop (``finetune_subset`` train images, ``batch_size``, ``lr``) into ``finetune/``, a share
    ``distill`` of the loss being the uncompressed model's decisions (``reinduce``: a new tree
    from the pruned head, and no teacher). Each ``quantize`` kind
    (:data:`nbdt.deploy.quantize.QUANTIZATIONS`) quantises the (pruned) ONNX file, static int8
    calibrated on ``calibration`` train images with ``activations``. Every variant is measured
    on the first ``test`` images of ``dataset``'s test split; ``compress.json`` records the
    settings and the measurements. ``progress`` shows a line as each stage starts (the
    fine-tuning epochs show their own).
    """
    import torch

    from nbdt import data
    from nbdt._io import new_folder, write_text
    from nbdt.deploy.export import export_onnx
    from nbdt.deploy.measure import evaluate_onnx, parameters_and_macs
    from nbdt.deploy.prune import IMPORTANCES, removed_share
    from nbdt.deploy.prune import prune as prune_network
    from nbdt.deploy.quantize import ACTIVATION_TYPES, QUANTIZATIONS
    from nbdt.evaluation.evaluate import class_lookup
    from nbdt.model import load
    from nbdt.training.finetune import finetune
    from nbdt.training.run_folder import RunFolder

    def stage(text: str) -> None:
        if progress is not None and (progress.bars or progress.log):
            progress.status(f"nbdt-compress: {text}")

    settings = {
        "prune": prune, "importance": importance, "round_to": round_to,
        "global_pruning": global_pruning, "finetune_epochs": finetune_epochs,
        "finetune_subset": finetune_subset, "batch_size": batch_size, "lr": lr,
        "distill": distill, "reinduce": reinduce, "quantize": quantize,
        "activations": activations, "dataset": dataset, "data_dir": data_dir,
        "calibration": calibration, "test": test,
    }  # fmt: skip
    _check(settings)
    check_choice("--importance", importance, IMPORTANCES)
    check_choice("--activations", activations, ACTIVATION_TYPES)
    check_choice("--dataset", dataset, data.DATASETS)
    for kind in quantize or ():
        check_choice("--quantize", kind, QUANTIZATIONS)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"-o {output}: exists and is not a folder")
    model = load(checkpoint)
    transform = data.BatchTransform(model.data_config)
    test_set = data.load_dataset(dataset, "test", data_dir)
    # The training run's held-out classes: scored as nbdt-eval scores them (the seen ones only).
    run = RunFolder(Path(checkpoint).parent, main=False).recorded_args() or {}
    holdout = list(run.get("holdout_classes") or [])
    lookup, _, _ = class_lookup(model.hierarchy, test_set, holdout)
    targets = test_set.targets if lookup is None else lookup[test_set.targets]
    seen = (targets >= 0).nonzero().flatten()[:test]
    with torch.no_grad():
        inputs = transform(test_set.images[seen]).numpy()
        labels = targets[seen].numpy()
        train = data.load_dataset(dataset, "train", data_dir)
        calibration_images = transform(train.images[:calibration]).numpy()
    batches = [calibration_images[i : i + 32] for i in range(0, len(calibration_images), 32)]

    with new_folder(output):  # a first write that fails leaves no empty folder
        notes: list[str] = []
        stage("exporting the uncompressed model to ONNX")
        files = {"uncompressed": export_onnx(model, output / "uncompressed.onnx")}
        networks = {"uncompressed": model}
        compressed = model
        if prune is not None:
            stage(f"pruning {prune:.0%} of the network's channels")
            compressed = prune_network(
                model,
                prune,
                importance=importance,
                global_pruning=global_pruning,
                round_to=round_to or None,
            )
            compressed.save(output / "pruned.pt")
            share = removed_share(model, compressed)
            notes.append(
                f"pruned: {share:.1%} of the network's parameters removed (--prune {prune} asked)"
                + ("" if finetune_epochs else "; not fine-tuned: add --finetune-epochs N")
            )
            if finetune_epochs:
                teacher = None if reinduce else model  # a new tree has no teacher's decisions
                config = _finetune_config(settings, model, output, holdout)
                compressed, _ = finetune(config, teacher=teacher, distill=distill)
                compressed.save(output / "pruned.pt")
            stage("exporting the pruned model to ONNX")
            files["pruned"] = export_onnx(compressed, output / "pruned.onnx")
            networks["pruned"] = compressed
        for kind in dict.fromkeys(quantize or ()):
            name = f"pruned_{kind}" if "pruned" in files else kind
            source = files.get("pruned", files["uncompressed"])
            stage(f"quantising ({kind})")
            quantizer = QUANTIZATIONS[kind]
            files[name] = quantizer(source, output / f"{name}.onnx", batches, activations)
            networks[name] = compressed
        stage(f"measuring {len(files)} ONNX files on {len(labels)} test images")
        rows = evaluate_onnx(files, inputs, labels, reference="uncompressed")
        for name, row in rows.items():
            row["params"], row["macs"] = parameters_and_macs(networks[name])
        report = {
            "checkpoint": str(checkpoint),
            "settings": settings,
            "test_images": len(labels),
            "variants": rows,
            "notes": notes,
        }
        write_text(output / "compress.json", json.dumps(report, indent=1) + "\n")
    return Compressed(output, files, rows, tuple(notes))


def _check(settings: dict[str, Any]) -> None:
    """Refuse settings that contradict each other, before anything is read or written."""
    ratio = settings["prune"]
    if settings["dataset"] == "folder":  # measured on in-memory test tensors only, for now
        raise ValueError("--dataset folder: nbdt-compress measures on fashion-mnist or cifar")
    if ratio is None and settings["quantize"] is None:
        raise ValueError("nothing to do: pass --prune RATIO and/or --quantize KIND")
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"--prune: the ratio must be between 0 and 1, got {ratio}")
    if settings["round_to"] is not None and settings["round_to"] < 0:
        raise ValueError(
            f"--round-to: a channel multiple >= 1 (0: none), got {settings['round_to']}"
        )
    epochs = settings["finetune_epochs"]
    if epochs < 0:
        raise ValueError(f"--finetune-epochs: must be >= 0, got {epochs}")
    if epochs and ratio is None:
        raise ValueError("--finetune-epochs fine-tunes a pruned model: pass --prune RATIO")
    if not 0 <= settings["distill"] <= 1:
        raise ValueError(f"--distill: a share between 0 and 1, got {settings['distill']}")
    if settings["reinduce"] and not epochs:
        raise ValueError(
            "--reinduce changes the tree the fine-tuning learns: pass --finetune-epochs"
        )
    for option in ("calibration", "test"):
        if settings[option] < 1:
            raise ValueError(f"--{option}: needs at least one image")


def _finetune_config(
    settings: dict[str, Any], model: NBDT, output: Path, holdout: Sequence[str]
) -> TrainConfig:
    """nbdt-train's settings for fine-tuning ``output``/pruned.pt into ``output``/finetune
    (without the classes the model's training run held out)."""
    from nbdt.training.config import TrainConfig

    size = model.data_config["input_size"]
    dataset = settings["dataset"]
    return TrainConfig(
        output=str(output / "finetune"),
        dataset=dataset,
        data_dir=settings["data_dir"],
        checkpoint=str(output / "pruned.pt"),
        hierarchy="induced" if settings["reinduce"] else "checkpoint",
        node_score=model.node_score,
        warmup_epochs=0,
        epochs=settings["finetune_epochs"],
        subset=settings["finetune_subset"],
        eval_subset=settings["test"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        image_size=size[-1] if dataset == "folder" and size[-1] == size[-2] else None,
        overwrite=True,
        holdout_classes=list(holdout) or None,
    )
