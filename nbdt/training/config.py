"""Every setting of an ``nbdt-train`` run (:class:`TrainConfig`), checked once at the boundary,
and the optimisers it can use (one table, read by argparse, validation and the factory).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nbdt import data as datasets
from nbdt.choices import check_choice
from nbdt.loss import LOSSES, SOFT_VARIANTS
from nbdt.networks import PADDINGS
from nbdt.rules import NODE_SCORES

DEFAULT_ARCH = "resnet101"


@dataclass(frozen=True)
class OptimizerDefaults:
    """An optimiser's base learning rates per 256 images (scaled linearly with the batch), from
    scratch and when starting from trained weights, and its weight decay."""

    base_lr: tuple[float, float]
    weight_decay: float


# Optimisers by timm's name (timm.optim.create_optimizer_v2 builds them).
OPTIMIZERS = {
    "sgd": OptimizerDefaults(base_lr=(0.1, 0.01), weight_decay=5e-4),
    "adamw": OptimizerDefaults(base_lr=(1e-3, 1e-4), weight_decay=0.05),
}


@dataclass
class TrainConfig:
    """Every setting of a run; the fields are ``nbdt-train``'s options (see its ``--help``).

    ``None`` means "resolve": ``arch`` (resnet101, or the checkpoint's), ``hierarchy`` (induced,
    or "checkpoint": the checkpoint's own, when its head has the dataset's classes), ``lr`` and
    ``weight_decay`` (per optimiser, lr scaled with the batch), ``workers`` (0 for in-memory
    data), ``device`` (cuda, mps, cpu).
    """

    output: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    arch: str | None = None
    pretrained: bool = False
    pretrained_file: str | None = None
    checkpoint: str | None = None
    hierarchy: str | None = None
    wordnet_weight: float = 0.0  # induced trees: 0 the weights alone, 1 WordNet (docs/names.md)
    padding: str | None = None  # zeros (timm's) for new networks, a checkpoint's own
    loss: str = "soft"
    soft_variant: str = "nll"
    tree_weight: float = 4.0  # measured: scripts/bench_accuracy.py, README's Results
    ce_weight: float = 1.0
    tree_weight_end: float | None = None
    tree_weight_power: float = 1.0
    ce_weight_end: float | None = None
    ce_weight_power: float = 1.0
    node_score: str = "mean"
    wnids: str | None = None
    warmup_epochs: int = 5
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int = 128
    workers: int | None = None
    seed: int = 0
    subset: int | None = None
    eval_subset: int | None = None
    holdout_classes: list[str] | None = None
    image_size: int | None = None
    augment: bool = True
    device: str | None = None
    amp: bool = True
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    explain: int = 0
    report: bool = True
    head_only: bool = False
    examples: bool = True

    def validate(self) -> None:
        """Check values once, at the boundary, before anything is written; a ``ValueError``
        names the option."""
        choices = {
            "dataset": datasets.DATASETS,
            "loss": LOSSES,
            "soft_variant": SOFT_VARIANTS,
            "node_score": NODE_SCORES,
            "optimizer": OPTIMIZERS,
        }
        if self.padding is not None:  # None: resolved from the checkpoint (plan.py)
            choices["padding"] = PADDINGS
        for name, allowed in choices.items():
            check_choice(option_name(name), getattr(self, name), allowed)
        non_negative = (
            "warmup_epochs", "epochs", "seed", "explain", "workers", "tree_weight", "ce_weight",
            "tree_weight_end", "ce_weight_end", "weight_decay",
        )  # fmt: skip
        positive = (
            "batch_size", "subset", "eval_subset", "image_size", "lr", "tree_weight_power",
            "ce_weight_power",
        )  # fmt: skip
        for name in non_negative + positive:
            value = getattr(self, name)
            if value is None:
                continue
            finite = not isinstance(value, float) or math.isfinite(value)
            if not (finite and (value > 0 if name in positive else value >= 0)):
                sign = ">" if name in positive else ">="
                raise ValueError(
                    f"{option_name(name)} must be a finite number {sign} 0, got {value}"
                )
        if self.holdout_classes is not None and (
            not all(self.holdout_classes)
            or len(set(self.holdout_classes)) < len(self.holdout_classes)
        ):
            raise ValueError(
                f"{option_name('holdout_classes')} must name distinct classes, got"
                f" {','.join(self.holdout_classes)!r}"
            )
        if self.report and importlib.util.find_spec("matplotlib") is None:
            raise ValueError(
                "matplotlib is missing for the end-of-run report: pip install 'nbdt[report]',"
                " or pass --no-report"
            )
        if self.warmup_epochs + self.epochs == 0:
            raise ValueError("nothing to do: --warmup-epochs and --epochs are both 0")
        check_output(self.output, self.resume, self.overwrite)
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise FileNotFoundError(
                f"{self.pretrained_file}: no such weights file (--pretrained-file)"
            )
        if not 0 <= self.wordnet_weight <= 1:
            raise ValueError(
                f"{option_name('wordnet_weight')} must be from 0 to 1, got {self.wordnet_weight}"
            )
        if self.hierarchy == "checkpoint" and not self.checkpoint:
            raise ValueError("--hierarchy checkpoint needs --checkpoint FILE")
        if self.head_only and not self.checkpoint:
            raise ValueError("--head-only refits the head of a trained model: give --checkpoint")
        if self.head_only and self.padding:
            raise ValueError(
                "--padding with --head-only: the backbone is frozen, it keeps the checkpoint's"
            )
        if self.head_only and self.resume:
            raise ValueError(
                "--head-only runs take seconds once features are cached: rerun with --overwrite"
                " instead of --resume"
            )
        if self.checkpoint and (self.pretrained or self.pretrained_file):
            raise ValueError(
                "--checkpoint already holds weights: drop --pretrained/--pretrained-file"
            )


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser factory: no weight decay on biases and norm layers."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )


def option_name(field: str) -> str:
    """A ``TrainConfig`` field as the command-line option the user typed."""
    return "--" + field.replace("_", "-")


def check_output(path: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over one already in ``path`` unless resuming or overwriting."""
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in --output, --overwrite replaces it: pass one of them"
        )
    output = Path(path).expanduser()
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output}: is a file, not a folder: choose another --output")
    if not (resume or overwrite) and (output / "last.pt").exists():
        raise ValueError(
            f"{output} holds a run (last.pt): pass --resume to continue it, --overwrite to"
            " replace it, or another --output"
        )
