"""The fine-tuning loop behind ``nbdt-train``: a timm backbone, its hierarchy, tree supervision.

A run warms the head up with plain cross-entropy while it is not trained for the dataset's
classes, builds the hierarchy (induced from that head, WordNet, random or a file), then fine-tunes
with the soft or hard tree-supervision loss, and after every epoch measures network, NBDT-soft and
NBDT-hard top-1. It runs on CUDA (bf16 autocast), MPS or CPU, and under ``torchrun`` with
DistributedDataParallel; checkpoints are written atomically and a resumed run ends as an
unstopped one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt import builders
from nbdt import data as datasets
from nbdt._io import atomic_path, remove_stale_temporaries, write_text
from nbdt._messages import for_terminal, one_line
from nbdt.checkpoint import check_format, read_checkpoint, save_checkpoint
from nbdt.classes import DatasetClasses, is_wordnet_id, read_wnid_overrides
from nbdt.hierarchy import Hierarchy
from nbdt.loss import LOSSES, SOFT_VARIANTS, SoftTreeSupLoss
from nbdt.model import NBDT
from nbdt.networks import create_model, network_from_checkpoint, rebuild_errors
from nbdt.pretrained import load_hierarchy_for
from nbdt.rules import NODE_SCORES, DecisionRules
from nbdt.visualize import explanation_html, hierarchy_html

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
_CHECK_EVERY = 20  # steps between running-loss read-outs (a device sync) and the NaN check


class LossDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which epoch ``last.pt`` holds."""


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
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{_option(name)} must be one of {', '.join(allowed)},"
                    f" got {getattr(self, name)!r}"
                )
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
                raise ValueError(
                    f"{_option(name)} must be a finite number {'>' if name in positive else '>='}"
                    f" 0, got {value}"
                )
        if self.holdout_classes is not None and (
            not all(self.holdout_classes)
            or len(set(self.holdout_classes)) < len(self.holdout_classes)
        ):
            raise ValueError(
                f"{_option('holdout_classes')} must name distinct classes, got"
                f" {','.join(self.holdout_classes)!r}"
            )
        if self.report and importlib.util.find_spec("matplotlib") is None:
            raise ValueError(
                "matplotlib is missing for the end-of-run report: pip install 'nbdt[report]',"
                " or pass --no-report"
            )
        if self.warmup_epochs + self.epochs == 0:
            raise ValueError("nothing to do: --warmup-epochs and --epochs are both 0")
        RunFolder.check(self.output, self.resume, self.overwrite)
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise FileNotFoundError(
                f"{self.pretrained_file}: no such weights file (--pretrained-file)"
            )
        if self.hierarchy == "checkpoint" and not self.checkpoint:
            raise ValueError("--hierarchy checkpoint needs --checkpoint FILE")
        if self.head_only and not self.checkpoint:
            raise ValueError("--head-only refits the head of a trained model: give --checkpoint")
        if self.head_only and self.resume:
            raise ValueError(
                "--head-only runs take seconds once features are cached: rerun with --overwrite"
                " instead of --resume"
            )
        if self.checkpoint and (self.pretrained or self.pretrained_file):
            raise ValueError(
                "--checkpoint already holds weights: drop --pretrained/--pretrained-file"
            )


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size; ``distributed`` under torchrun."""

    device: torch.device
    rank: int = 0
    world: int = 1
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum over processes (in place); a no-op outside torchrun."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the recipe and return the summary (also printed, with the output files).

    Raises ``ValueError`` / ``FileNotFoundError`` for bad input, :class:`LossDiverged` when the
    loss stops being finite and :class:`Interrupted` on Ctrl-C.
    """
    config.validate()
    runtime = start_runtime(config.device)
    try:
        with _sigterm_as_ctrl_c():
            plan = make_plan(config, runtime.device)
            if config.head_only:
                from nbdt.head_only import fit_head

                summary = fit_head(plan, runtime)
            else:
                summary = _Fit(plan, runtime).run()
        if runtime.distributed:
            dist.barrier()  # rank 0 still writes pages and explanations: leave the group together
        return summary
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


def start_runtime(device_name: str | None) -> Runtime:
    """Pick the device and, under torchrun, join the process group (NCCL on CUDA, else gloo)."""
    if device_name is None:
        if torch.cuda.is_available():
            device_name = "cuda"
        elif torch.backends.mps.is_available():
            device_name = "mps"
        else:
            device_name = "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device_name!r} (--device: cuda, cuda:N, mps, cpu)"
        ) from None
    if "LOCAL_RANK" not in os.environ:  # not started by torchrun
        _check_device(device)
        return Runtime(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    _check_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, dist.get_rank(), dist.get_world_size(), distributed=True)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available")


# ---------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What a run trains, resolved once from a :class:`TrainConfig`: the settings with every
    default filled in (what args.json records), the checkpoint it starts from (read and its
    hierarchy parsed once), the dataset's splits and classes, and where the hierarchy comes from.
    """

    config: TrainConfig
    train_set: datasets.ImageDataset
    test_set: datasets.ImageDataset
    classes: DatasetClasses
    image_size: tuple[int, int] | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_hierarchy: Hierarchy | None = None
    class_guesses: list[str] = dataclasses.field(default_factory=list)
    eval_set: datasets.ImageDataset | None = None
    """The test split with the held-out classes' images too (``--holdout-classes``); the
    end-of-run evaluation reads it, ``test_set`` holds the seen classes only."""

    @property
    def trained_head(self) -> bool:
        """Whether the checkpoint's head already predicts these classes: no warm-up then."""
        tree = self.checkpoint_hierarchy
        return tree is not None and tree.has_classes(self.classes.names, self.classes.wnids)

    @property
    def warmup_epochs(self) -> int:
        return 0 if self.trained_head else self.config.warmup_epochs

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.config.epochs

    def network(self) -> tuple[nn.Module, dict[str, Any]]:
        """The timm network with a head for the dataset's classes, and its timm arguments."""
        config, num_classes = self.config, len(self.classes.names)
        if self.checkpoint is not None:
            model = network_from_checkpoint(self.checkpoint, config.checkpoint)
            if self.trained_head:
                return model, dict(self.checkpoint["model_kwargs"])
            model.reset_classifier(num_classes)
            return model, {**self.checkpoint["model_kwargs"], "num_classes": num_classes}
        import timm

        if not timm.is_model(config.arch):
            raise ValueError(
                f"unknown timm architecture {config.arch!r} (--arch; see timm.list_models())"
            )
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        model = create_model(
            config.arch,
            pretrained=config.pretrained,
            pretrained_file=config.pretrained_file,
            **kwargs,
        )
        return model, kwargs

    def data_config(self, model: nn.Module, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """timm's data config of the network, at the size the images are read."""
        size = self.image_size or self.train_set.image_shape[1:]
        return datasets.data_config(model, size, model_kwargs.get("in_chans", 3))

    def fixed_hierarchy(self) -> Hierarchy | None:
        """The hierarchy known before training, or None when it is induced from the head."""
        kind, classes = self.config.hierarchy, self.classes
        if kind == "induced":
            return None
        if kind == "checkpoint":
            if not self.trained_head:
                raise ValueError(
                    f"{self.config.checkpoint}: its hierarchy's classes are not the"
                    f" {self.config.dataset} classes: pass --hierarchy induced|wordnet|random|FILE"
                )
            return self.checkpoint_hierarchy
        if kind in builders.BUILDERS:
            return builders.build(kind, classes, seed=self.config.seed)
        return load_hierarchy_for(kind, classes.names, classes.wnids)

    def check_tree_source(self) -> None:
        """Refuse to induce the tree before any epoch trained the head (the recipe would build
        it from random weights, which ``nbdt-hierarchy induced`` refuses too)."""
        if self.config.hierarchy == "induced" and self.warmup_epochs == 0 and not self.trained_head:
            raise ValueError(
                f"--hierarchy induced with --warmup-epochs 0: {builders.RANDOM_HEAD};"
                " pass --warmup-epochs N (N >= 1), a --checkpoint whose head has these classes,"
                " or --hierarchy wordnet|random|FILE"
            )

    def induce(self, model: nn.Module) -> Hierarchy:
        """The hierarchy induced from the head's weights as they are now."""
        return builders.build("induced", self.classes, weights=model)

    def criterion(self, epoch: int, hierarchy: Hierarchy | None, device: torch.device) -> nn.Module:
        """Cross-entropy while warming up, then the tree-supervision loss at this epoch."""
        if epoch < self.warmup_epochs:
            return nn.CrossEntropyLoss()
        config = self.config
        options = {
            name: getattr(config, name)
            for name in (
                "tree_weight", "ce_weight", "tree_weight_end", "tree_weight_power",
                "ce_weight_end", "ce_weight_power", "node_score",
            )
        }  # fmt: skip
        if LOSSES[config.loss] is SoftTreeSupLoss:
            options["variant"] = config.soft_variant
        loss = LOSSES[config.loss](hierarchy, **options)
        loss.set_epoch(epoch - self.warmup_epochs, config.epochs)
        return loss.to(device)


def make_plan(config: TrainConfig, device: torch.device) -> Plan:
    """Read the checkpoint (once) and the data, and fill in every default of ``config``."""
    checkpoint = tree = None
    if config.checkpoint:
        checkpoint = read_checkpoint(config.checkpoint)
        check_format(checkpoint, config.checkpoint)
        with rebuild_errors(config.checkpoint):
            tree = Hierarchy.from_node_link(checkpoint["hierarchy"])
    if checkpoint is not None and config.arch and config.arch != checkpoint["arch"]:
        raise ValueError(
            f"--arch {config.arch} but {config.checkpoint} holds a {checkpoint['arch']}:"
            " drop --arch"
        )
    config = _resolve(config, checkpoint, device)
    # Folders are read at a fixed size; in-memory datasets keep theirs unless --image-size.
    size = (config.image_size,) * 2 if config.image_size else None
    if size is None and config.dataset == "folder":
        size = _default_size(config.arch, checkpoint)
    overrides = read_wnid_overrides(config.wnids) if config.wnids else None
    load = {"download": config.download, "image_size": size or (224, 224), "wnids": overrides}
    train_set = datasets.load_dataset(config.dataset, "train", config.data_dir, **load)
    test_set = datasets.load_dataset(config.dataset, "test", config.data_dir, **load)
    if train_set.classes != test_set.classes:
        raise ValueError(f"{config.dataset}: train and test splits have different classes")
    if config.eval_subset:
        test_set = test_set.head(config.eval_subset)
    eval_set = test_set
    if config.holdout_classes:
        _check_holdout(config.holdout_classes, train_set.classes, train_set.wnids)
        train_set = train_set.without_classes(config.holdout_classes)
        test_set = test_set.without_classes(config.holdout_classes)
    if config.subset:
        train_set = train_set.head(config.subset)
    classes = DatasetClasses(config.dataset, tuple(train_set.classes), tuple(train_set.wnids))
    guesses = [str(r) for r in getattr(train_set, "resolutions", ()) if r.fallback]
    if len(classes.names) < 2:
        raise ValueError(
            f"{config.dataset}: one class ({', '.join(classes.names)}): a classifier and its"
            " hierarchy need at least two"
        )
    plan = Plan(config, train_set, test_set, classes, size, checkpoint, tree, guesses, eval_set)
    if config.hierarchy is None:  # a trained head's hierarchy is the default one
        kind = "checkpoint" if plan.trained_head else "induced"
        plan.config = dataclasses.replace(config, hierarchy=kind)
    if len(train_set) < config.batch_size:
        raise ValueError(
            f"{len(train_set)} training images, fewer than one batch"
            f" ({config.batch_size}): lower --batch-size or raise --subset"
        )
    return plan


def _check_holdout(names: Sequence[str], classes: Sequence[str], wnids: Sequence[str]) -> None:
    """Every held-out name is one of the dataset's classes, with a WordNet id (its target node
    is found through WordNet), and two classes or more stay."""
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise ValueError(
            f"{_option('holdout_classes')}: {', '.join(map(repr, unknown))} not among the"
            f" dataset's classes: {', '.join(classes)}"
        )
    wnid = dict(zip(classes, wnids, strict=True))
    unnamed = [name for name in names if not is_wordnet_id(wnid[name])]
    if unnamed:
        raise ValueError(
            f"{_option('holdout_classes')}: {unnamed[0]!r} has no WordNet id, so no node of the"
            " tree is its target"
        )
    if len(classes) - len(names) < 2:
        raise ValueError(f"{_option('holdout_classes')}: fewer than two classes would stay")


def _resolve(
    config: TrainConfig, checkpoint: dict[str, Any] | None, device: torch.device
) -> TrainConfig:
    """Fill in the settings left to defaults, so args.json records what the run used."""
    trained = bool(checkpoint or config.pretrained or config.pretrained_file)
    defaults = OPTIMIZERS[config.optimizer]
    return dataclasses.replace(
        config,
        output=str(Path(config.output).expanduser().resolve()),
        arch=config.arch or (checkpoint["arch"] if checkpoint else DEFAULT_ARCH),
        lr=config.lr or defaults.base_lr[trained] * config.batch_size / 256,
        weight_decay=(
            defaults.weight_decay if config.weight_decay is None else config.weight_decay
        ),
        workers=config.workers if config.workers is not None else _default_workers(config),
        device=str(device),
    )


# ------------------------------------------------------------------------- epoch steps
@dataclass
class StepContext:
    """How batches run here: device, precision (autocast dtype, grad scaler), memory format,
    the process group (sums over ranks) and the progress display."""

    runtime: Runtime
    amp_dtype: torch.dtype | None = None
    progress: Progress | None = None
    scaler: torch.amp.GradScaler = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if self.progress is None:
            self.progress = Progress(self.runtime.main, quiet=True)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.device.type == "cuda" else torch.preserve_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, images: Tensor, transform: Callable[..., Tensor], generator=None) -> Tensor:
        """A loader's batch as the model's input, on the device: ``transform(images,
        generator)`` (uint8 images to normalised floats, or anything else, e.g. cached features);
        image batches in the device's best memory format."""
        inputs = transform(images.to(self.device, non_blocking=True), generator)
        return inputs.contiguous(memory_format=self.memory_format) if inputs.dim() == 4 else inputs


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    transform: Callable[..., Tensor],
    context: StepContext,
    *,
    generator: torch.Generator | None = None,
    description: str = "train",
    teacher: nn.Module | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: a step of ``optimizer`` (and ``scheduler``) per batch.

    With a ``teacher`` network (distillation), the loss is ``criterion(logits, targets,
    teacher_logits)``, the teacher's logits on the same inputs, without gradients.

    Returns the mean loss, top-1 and throughput over all processes; raises
    :class:`LossDiverged` when the running loss stops being finite.
    """
    model.train()
    extra: tuple[Tensor, ...] = ()
    device = context.device
    sums = torch.zeros(2, device=device)  # loss * n, correct
    count = 0
    steps = len(loader)
    bar = context.progress.bar(steps, description)
    _sync(device)
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader, 1):
        inputs = context.inputs(images, transform, generator)
        targets = targets.to(device, non_blocking=True)
        with context.autocast():
            logits = model(inputs)
            if teacher is not None:
                with torch.no_grad():
                    extra = (teacher(inputs).float(),)
        loss = criterion(logits.float(), targets, *extra)
        optimizer.zero_grad(set_to_none=True)
        context.scaler.scale(loss).backward()
        context.scaler.step(optimizer)
        context.scaler.update()
        scheduler.step()
        with torch.no_grad():
            correct = (logits.argmax(1) == targets).sum()
            sums += torch.stack([loss.detach() * len(targets), correct.float()])
        count += len(targets)
        if step % _CHECK_EVERY == 0 or step == steps:
            total = context.runtime.all_reduce(torch.cat([sums, sums.new_tensor([count])]))
            total = total.tolist()
            running = total[0] / total[2]
            if not math.isfinite(running):
                raise LossDiverged(f"loss became {running} in {description} near step {step}")
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{running:.3f}", top1=f"{100 * total[1] / total[2]:.1f}%")
    _sync(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    loss_sum, correct, count = total
    return {
        "train_loss": loss_sum / count,
        "train_top1": 100 * correct / count,
        "train_images": int(count),
        "train_images_per_s": count / seconds,
    }


@torch.inference_mode()
def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    rules: DecisionRules,
    transform: Callable[..., Tensor],
    context: StepContext,
) -> dict[str, float]:
    """Network, NBDT-soft and NBDT-hard top-1 and losses over ``loader``, from one pass
    (summed over processes: give each rank its own share of the images)."""
    model.eval()
    device = context.device
    sums = torch.zeros(5, device=device)  # loss, cross-entropy, correct: net, soft, hard
    count = 0
    bar = context.progress.bar(len(loader), "  test")
    _sync(device)
    start = time.perf_counter()
    for images, targets in loader:
        inputs = context.inputs(images, transform)
        targets = targets.to(device, non_blocking=True)
        with context.autocast():
            logits = model(inputs)
        logits = logits.float()
        sums += torch.stack(
            [
                criterion(logits, targets) * len(targets),
                F.cross_entropy(logits, targets, reduction="sum"),
                (logits.argmax(1) == targets).sum().float(),
                (rules.soft(logits).argmax(1) == targets).sum().float(),
                (rules.hard(logits) == targets).sum().float(),
            ]
        )
        count += len(targets)
        if bar is not None:
            bar.update()
    total = context.runtime.all_reduce(torch.cat([sums, sums.new_tensor([count])])).tolist()
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    loss, ce, net, soft, hard, count = total
    return {
        "test_loss": loss / count,
        "test_ce": ce / count,
        "top1": 100 * net / count,
        "nbdt_soft_top1": 100 * soft / count,
        "nbdt_hard_top1": 100 * hard / count,
        "test_images": int(count),
        "test_images_per_s": count / seconds,
    }


def train_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, runtime: Runtime
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DistributedSampler]:
    """Shuffled batches; the sampler also serves one process, so any world size sees the
    same global batches (the ranks' shares of each batch interleave)."""
    if config.batch_size % runtime.world:
        raise ValueError(
            f"--batch-size {config.batch_size} does not split over {runtime.world} processes"
        )
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=runtime.world, rank=runtime.rank, shuffle=True, seed=config.seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size // runtime.world,
        sampler=sampler,
        drop_last=True,
        **_loader_options(config.workers, runtime.device),
    )
    return loader, sampler


def eval_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, runtime: Runtime
) -> torch.utils.data.DataLoader:
    """Each rank evaluates every world-th image, none twice, so summed counts are exact."""
    shard = torch.utils.data.Subset(dataset, range(runtime.rank, len(dataset), runtime.world))
    return torch.utils.data.DataLoader(
        shard, batch_size=config.batch_size, **_loader_options(config.workers, runtime.device)
    )


# ---------------------------------------------------------------------------- run folder
@dataclass
class RunResult:
    """What a finished run hands its output stages: the final model and the test images."""

    model: NBDT
    config: TrainConfig
    classes: DatasetClasses
    test_set: datasets.ImageDataset
    transform: nn.Module
    progress: Progress
    eval_set: datasets.ImageDataset | None = None  # the test split with held-out classes
    train_set: datasets.ImageDataset | None = None
    examples: Any = None  # the run's NodeExamples, once the node_examples stage made them


OutputStage = Callable[["RunFolder", RunResult], None]


def node_examples(folder: RunFolder, result: RunResult) -> None:
    """node_examples.npz: each node's representative and confused training images (the pages
    show them); off with --no-examples."""
    if not result.config.examples or result.train_set is None:
        return
    from nbdt.evidence import node_examples as find_examples

    result.examples = find_examples(
        result.model.eval(),
        result.train_set,
        batch_size=result.config.batch_size,
        progress=result.progress.bars,  # a bar on a terminal only, as the epochs'
        distributed=False,
    )
    result.examples.save(folder.path / "node_examples.npz")


def hierarchy_page(folder: RunFolder, result: RunResult) -> None:
    """hierarchy.html (with the node examples when there are some)."""
    hierarchy_html(
        result.model.hierarchy,
        folder.path / "hierarchy.html",
        title=f"{result.config.dataset} hierarchy",
        examples=result.examples,
    )


def explanations(folder: RunFolder, result: RunResult) -> None:
    """Explain the first ``--explain`` test images: text, explanations.json/.html and PNGs."""
    count = result.config.explain
    if not count:
        return
    test_set, model = result.test_set, result.model.eval()
    images, targets = zip(*(test_set[i] for i in range(min(count, len(test_set)))), strict=True)
    device = next(model.parameters()).device
    batch = result.transform(torch.stack(images).to(device))
    if result.examples is not None:
        try:
            explained = model.explain(batch, evidence=True, examples=result.examples)
        except (ValueError, ImportError) as e:  # no spatial map, or no grad-cam: examples only
            result.progress.line(f"explanations without heatmaps: {one_line(e)}")
            explained = model.explain(batch, examples=result.examples)
    else:
        explained = model.explain(batch)
    pictures = [datasets.to_pil(image) for image in images]
    (folder.path / "images").mkdir(exist_ok=True)
    records = []
    for i, (picture, target, explanation) in enumerate(
        zip(pictures, targets, explained, strict=True)
    ):
        path = folder.path / "images" / f"test-{i}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        truth = result.classes.names[int(target)]
        records.append({"image": str(path), "true_label": truth, **explanation.to_dict()})
        result.progress.line(f"{path.name} (true: {truth}) {explanation}")
    _write_json(folder.path / "explanations.json", records)
    explanation_html(
        explained,
        pictures,
        folder.path / "explanations.html",
        hierarchy=result.model.hierarchy,
        title=f"{result.config.arch} on {result.config.dataset}",
    )


def evaluation_report(folder: RunFolder, result: RunResult) -> None:
    """eval.json and report.html: the hierarchy-aware evaluation of the final model on the test
    split, held-out classes included (docs/metrics.md), with the run's training curves."""
    if not result.config.report:
        return
    from nbdt.evaluate import evaluate

    config = result.config
    evaluated = evaluate(
        result.model,
        result.eval_set if result.eval_set is not None else result.test_set,
        holdout=config.holdout_classes or (),
        batch_size=config.batch_size,
        workers=config.workers,
        distributed=False,
    )
    title = f"{config.arch} on {config.dataset}: evaluation"
    evaluated.write(folder.path, history=folder.history(), title=title)
    result.progress.line(evaluated.summary())


OUTPUT_STAGES: list[OutputStage] = [
    node_examples,
    hierarchy_page,
    explanations,
    evaluation_report,
]
"""What every run writes at its end, in order; a stage may write nothing (see its setting)."""


class RunFolder:
    """A run's output folder: args.json, last.pt and best.pt, metrics.jsonl, hierarchy.json,
    the end-of-run outputs (:data:`OUTPUT_STAGES`), and the rules for resuming or replacing it.

    Only the main process (``main``) writes; every write is atomic.
    """

    FILES = (
        "last.pt", "best.pt", "metrics.jsonl", "args.json", "hierarchy.json", "hierarchy.html",
        "explanations.json", "explanations.html", "eval.json", "report.html",
        "node_examples.npz",
    )  # fmt: skip
    # Settings that do not change what a run computes: --resume may differ in these only.
    OPERATIONAL = frozenset(
        {
            "output", "data_dir", "download", "workers", "device", "compile", "resume",
            "overwrite", "quiet", "explain", "report", "examples",
        }
    )  # fmt: skip

    def __init__(self, path: str | os.PathLike[str], main: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.main = main
        self.saved_epoch = 0  # the epoch last.pt holds
        self.stages: list[OutputStage] = list(OUTPUT_STAGES)

    @staticmethod
    def check(path: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
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

    def resume_from(
        self, config: TrainConfig, device: torch.device
    ) -> tuple[dict[str, Any] | None, str]:
        """``last.pt``, checked to be a run of these settings, and a line saying what happens."""
        path = self.path / "last.pt"
        if not path.is_file():
            return None, f"no {path} yet: starting afresh"
        checkpoint = read_checkpoint(path, map_location=device)
        state = checkpoint.get("train")
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError(f"{path}: a model file without training state: cannot resume from it")
        before = state["config"]
        if config.epochs < before.get("epochs", 0):
            raise ValueError(
                f"--resume: --epochs {config.epochs} is fewer than the {before['epochs']} of"
                f" {path}'s run: --resume may raise --epochs, not lower it"
            )
        changed = [
            k
            for k, v in dataclasses.asdict(config).items()
            if k not in self.OPERATIONAL and k != "epochs" and before.get(k) != v
        ]
        if changed:
            key = changed[0]
            raise ValueError(
                f"--resume: {key} is {getattr(config, key)!r} here but {before.get(key)!r} in"
                f" {path}'s run: resume with the same settings, or use another --output"
            )
        return checkpoint, f"resuming {path} after epoch {int(state['epoch'])}"

    def start(self, config: TrainConfig, notes: dict[str, Any] | None = None) -> None:
        """Create the folder, drop a replaced run's files (--overwrite), write args.json
        (the settings, and ``notes``: what the run guessed, e.g. class senses)."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if config.overwrite or config.resume:
            remove_stale_temporaries(self.path)
        if config.overwrite:
            for name in self.FILES:
                (self.path / name).unlink(missing_ok=True)
            for image in self.path.glob("images/test-*.png"):
                image.unlink()
        _write_json(self.path / "args.json", {**dataclasses.asdict(config), **(notes or {})})

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Put every file back to the state of ``checkpoint`` (the last.pt resumed from): a
        ``kill -9`` may have stopped the run after last.pt and before best.pt, metrics.jsonl or
        hierarchy.json were written. Pages are written at the end of a run, from its state."""
        if not self.main:
            return
        state = checkpoint["train"]
        if (state.get("best") or {}).get("epoch") == state["epoch"]:
            self._save(checkpoint, "best.pt")  # last.pt is then the best checkpoint
        _write_lines(self.path / "metrics.jsonl", state["history"])
        Hierarchy.from_node_link(checkpoint["hierarchy"]).save(self.path / "hierarchy.json")

    def recorded_args(self) -> dict[str, Any] | None:
        """The settings args.json records (a run's), or None when the folder has none."""
        path = self.path / "args.json"
        if not path.is_file():
            return None
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(recorded, dict):
            raise ValueError(f"{path}: not a JSON object of settings")
        return recorded

    def history(self) -> list[dict[str, Any]] | None:
        """The rows of metrics.jsonl (one per epoch), or None when there are none."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not JSON lines ({e})") from None
        return [row for row in rows if isinstance(row, dict)] or None

    def publish_hierarchy(self, hierarchy: Hierarchy) -> None:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            hierarchy.save(self.path / "hierarchy.json")

    def save_epoch(
        self,
        checkpoint: dict[str, Any],
        history: Sequence[dict[str, Any]],
        best: bool,
        then: Callable[[], None] = lambda: None,
    ) -> None:
        """last.pt (and best.pt), metrics.jsonl, then ``then()`` (the epoch's report). A Ctrl-C
        meanwhile fires after all of it: the files are whole, ``saved_epoch`` says which epoch
        they hold."""
        if not self.main:
            return
        with _interrupts_deferred():
            self._save(checkpoint, "last.pt")
            self.saved_epoch = checkpoint["train"]["epoch"]
            if best:
                self._save(checkpoint, "best.pt")
            _write_lines(self.path / "metrics.jsonl", history)
            then()

    def _save(self, checkpoint: dict[str, Any], name: str) -> None:
        save_checkpoint(checkpoint, self.path / name)  # a failure names the file (nbdt._io)

    def last_good(self) -> str:
        if not self.saved_epoch:
            return "no checkpoint was written"
        return f"{self.path / 'last.pt'} holds the last good epoch, {self.saved_epoch}"

    def after_error(self) -> str:
        """What the folder holds after a run stopped on an error, and how to go on."""
        if not self.saved_epoch:
            return (
                f"no checkpoint was written in {self.path}: run the same command again once fixed"
            )
        return (
            f"{self.path / 'last.pt'} holds epoch {self.saved_epoch}: continue with --resume"
            " once fixed"
        )

    def finish(self, result: RunResult) -> None:
        """Run the output stages, in order (main process only)."""
        if self.main:
            for stage in self.stages:
                stage(self, result)


# ----------------------------------------------------------------------------- the run
class _Fit:
    """The recipe of ``nbdt-train`` over the pieces above: the plan's network and data,
    warm-up then tree-supervised epochs, a checkpoint per epoch, the output stages at the end."""

    def __init__(self, plan: Plan, runtime: Runtime):
        plan.check_tree_source()
        self.plan, self.runtime = plan, runtime
        self.config = config = plan.config
        self.folder = RunFolder(config.output, runtime.main)
        device = runtime.device

        torch.manual_seed(config.seed)
        self.model, self.model_kwargs = plan.network()
        self.data_config = plan.data_config(self.model, self.model_kwargs)
        self.train_transform = datasets.BatchTransform(self.data_config, augment=config.augment)
        self.eval_transform = datasets.BatchTransform(self.data_config)
        self.hierarchy = plan.fixed_hierarchy()
        self.context = StepContext(
            runtime,
            amp_dtype(device) if config.amp else None,
            Progress(runtime.main, config.quiet),
        )
        self.model.to(device, memory_format=self.context.memory_format)
        self.train_transform.to(device)
        self.eval_transform.to(device)

        self.train_loader, self.sampler = train_loader(plan.train_set, config, runtime)
        self.test_loader = eval_loader(plan.test_set, config, runtime)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=plan.total_epochs * len(self.train_loader)
        )
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.resumed: dict[str, Any] | None = None
        self.resume_note = self._resume() if config.resume else None

        self.train_model = self.model
        if runtime.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    def _resume(self) -> str:
        """Restore the run in ``last.pt`` of the output folder, if there is one; say what."""
        checkpoint, note = self.folder.resume_from(self.config, self.runtime.device)
        if checkpoint is None:
            return note
        state = checkpoint["train"]
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.context.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"{self.folder.path / 'last.pt'}: cannot restore the run ({one_line(e)})"
            ) from None
        # --epochs may have grown: the schedule runs to the new end
        self.scheduler.T_max = self.plan.total_epochs * len(self.train_loader)
        self.resumed = checkpoint
        self.start_epoch = self.folder.saved_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state["best"]
        if self.hierarchy is None and self.start_epoch >= self.plan.warmup_epochs:
            self.hierarchy = Hierarchy.from_node_link(checkpoint["hierarchy"])
        return note

    def run(self) -> dict[str, Any]:
        """Write the run's files (only now: every setting has been checked) and train."""
        progress = self.context.progress
        guesses = self.plan.class_guesses
        self.folder.start(self.config, {"class_guesses": guesses} if guesses else None)
        for guess in guesses:
            progress.line(f"class name guessed: {for_terminal(guess)}; override with --wnids")
        if self.resumed is not None:
            self.folder.restore(self.resumed)
            self.resumed = None
        if self.resume_note:
            progress.line(self.resume_note)
        if self.hierarchy is not None:
            self.folder.publish_hierarchy(self.hierarchy)
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.plan.total_epochs):
                self._epoch(epoch)
        except KeyboardInterrupt:
            done = self.folder.saved_epoch
            when = f"after epoch {done}" if done == epoch + 1 else f"during epoch {epoch + 1}"
            where = (
                f"{self.folder.path / 'last.pt'} holds epoch {done}"
                if done
                else ("no epoch finished")
            )
            raise Interrupted(f"{when}: {where}; continue with --resume") from None
        except (ValueError, OSError) as e:  # a bad image found mid-epoch, a full disk
            kind = OSError if isinstance(e, OSError) else ValueError
            raise kind(f"{one_line(e)}; {self.folder.after_error()}") from None
        summary = self._summary()
        result = RunResult(
            self._nbdt(self.hierarchy),
            self.config,
            self.plan.classes,
            self.plan.test_set,
            self.eval_transform,
            progress,
            self.plan.eval_set,
            self.plan.train_set,
        )
        self.folder.finish(result)
        progress.summary(summary)
        return summary

    def _epoch(self, epoch: int) -> None:
        plan, config = self.plan, self.config
        tree_phase = epoch >= plan.warmup_epochs
        if tree_phase and self.hierarchy is None:  # no warm-up epoch ran before this one here
            self.hierarchy = plan.induce(self.model)
            self.folder.publish_hierarchy(self.hierarchy)
        criterion = plan.criterion(epoch, self.hierarchy, self.runtime.device)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step
        self.sampler.set_epoch(epoch)
        generator = _seed_epoch(config.seed, epoch, self.runtime.rank, self.runtime.device)
        try:
            train_stats = train_one_epoch(
                self.train_model, self.train_loader, criterion, self.optimizer, self.scheduler,
                self.train_transform, self.context, generator=generator,
                description=f"epoch {epoch + 1}/{plan.total_epochs}",
            )  # fmt: skip
        except LossDiverged as e:
            stopped = f"{e}: stopped; {self.folder.last_good()}; try a lower --lr"
            raise LossDiverged(stopped) from None
        hierarchy = self.hierarchy
        if not tree_phase and config.hierarchy == "induced":
            # Evaluate the warm-up with the tree of the head as it is now; the last one stays.
            hierarchy = plan.induce(self.model)
            self.folder.publish_hierarchy(hierarchy)
            if epoch + 1 == plan.warmup_epochs:
                self.hierarchy = hierarchy
        nbdt = self._nbdt(hierarchy)
        test_stats = validate(
            self.model, self.test_loader, criterion, nbdt.rules, self.eval_transform, self.context
        )
        phase = "tree" if tree_phase else "warmup"
        metrics = {"epoch": epoch + 1, "phase": phase, "lr": lr, **train_stats, **test_stats}
        self.history.append(metrics)
        improved = self.best is None or metrics["nbdt_soft_top1"] > self.best["nbdt_soft_top1"]
        if improved:
            self.best = {"epoch": epoch + 1, "nbdt_soft_top1": metrics["nbdt_soft_top1"]}
        if self.runtime.main:
            checkpoint = nbdt.checkpoint(train=self._train_state(epoch + 1))
            report = functools.partial(self.context.progress.epoch, metrics, plan.total_epochs)
            self.folder.save_epoch(checkpoint, self.history, improved, then=report)

    def _nbdt(self, hierarchy: Hierarchy) -> NBDT:
        return NBDT(
            self.model,
            hierarchy,
            node_score=self.config.node_score,
            arch=self.config.arch,
            model_kwargs=self.model_kwargs,
            data_config=self.data_config,
        ).to(self.runtime.device)

    def _train_state(self, epoch: int) -> dict[str, Any]:
        """What --resume needs besides the model: random state is derived from (seed, epoch,
        rank) at every epoch start, so the seed and the epoch stand for it."""
        return {
            "epoch": epoch,
            "config": dataclasses.asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.context.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def _summary(self) -> dict[str, Any]:
        last = self.history[-1]
        return {
            "output": str(self.folder.path),
            "epochs": last["epoch"],
            "warmup_epochs": self.plan.warmup_epochs,
            "top1": last["top1"],
            "nbdt_soft_top1": last["nbdt_soft_top1"],
            "nbdt_hard_top1": last["nbdt_hard_top1"],
            "best": self.best,
            "train_images_per_s": last["train_images_per_s"],
        }


# ------------------------------------------------------------------------------- helpers
def _default_size(arch: str, source: dict[str, Any] | None) -> tuple[int, int]:
    """Image size for folder datasets: the checkpoint's, else the architecture's default."""
    if source is not None and source.get("data_config"):
        return tuple(source["data_config"]["input_size"][-2:])
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    size = cfg.input_size if cfg is not None else (3, 224, 224)
    return tuple(size[-2:])


def _default_workers(config: TrainConfig) -> int:
    """No workers for in-memory datasets (an index lookup), up to 8 for image folders."""
    if config.dataset != "folder":
        return 0
    return min(
        8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def _loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    return {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser factory: no weight decay on biases and norm layers."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing); none elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """Seed torch from (seed, epoch, rank) and return the augmentation's generator, seeded too.

    Everything random in an epoch follows from these, so a resumed epoch replays exactly.
    """
    base = ((seed * 1_000_003 + epoch) * 1024 + rank) * 2
    torch.manual_seed(base)
    return torch.Generator(device).manual_seed(base + 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _option(field: str) -> str:
    """A ``TrainConfig`` field as the command-line option the user typed."""
    return "--" + field.replace("_", "-")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `kill` send


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does: whole files, a line saying how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, so the writes in flight finish; then
    raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in _STOP_SIGNALS
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


def _write_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


class Progress:
    """tqdm bars on a terminal; otherwise (or with ``quiet``) one plain line per epoch."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.bars = enabled and not quiet and sys.stderr.isatty()

    def bar(self, total: int, description: str) -> Any:
        if not self.bars:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def epoch(self, m: dict[str, Any], total: int) -> None:
        self.line(
            f"epoch {m['epoch']}/{total} {m['phase']:<6} train loss {m['train_loss']:.4f}"
            f" top-1 {m['train_top1']:.2f}% | test loss {m['test_loss']:.4f} network"
            f" {m['top1']:.2f}% NBDT soft {m['nbdt_soft_top1']:.2f}% hard"
            f" {m['nbdt_hard_top1']:.2f}% | {m['train_images_per_s']:.0f} img/s"
        )

    def summary(self, s: dict[str, Any]) -> None:
        best = s["best"]
        self.line(
            f"done: {s['epochs']} epochs ({s['warmup_epochs']} warm-up)\n"
            f"  network top-1    {s['top1']:6.2f}%\n"
            f"  NBDT soft top-1  {s['nbdt_soft_top1']:6.2f}%\n"
            f"  NBDT hard top-1  {s['nbdt_hard_top1']:6.2f}%\n"
            f"  best NBDT soft top-1 {best['nbdt_soft_top1']:.2f}% at epoch {best['epoch']}"
            " (best.pt)\n"
            f"outputs in {s['output']}"
        )
