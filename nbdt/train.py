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
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt import data as datasets
from nbdt._io import atomic_path, write_text
from nbdt._messages import one_line
from nbdt.classes import DatasetClasses
from nbdt.hierarchy import Hierarchy
from nbdt.loss import SOFT_VARIANTS, HardTreeSupLoss, SoftTreeSupLoss
from nbdt.model import NBDT, read_checkpoint, save_checkpoint
from nbdt.pretrained import load_hierarchy_for

DEFAULT_ARCH = "resnet101"
LOSSES = ("soft", "hard")
OPTIMIZERS = ("sgd", "adamw")
# Base learning rates per 256 images (scaled linearly with the batch), from scratch and when
# starting from trained weights; weight decay per optimiser.
_BASE_LR = {"sgd": (0.1, 0.01), "adamw": (1e-3, 1e-4)}
_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Settings that do not change what a run computes: --resume may differ in these only.
_OPERATIONAL = frozenset(
    {
        "output", "data_dir", "download", "workers", "device", "compile", "resume", "overwrite",
        "quiet", "explain",
    }
)  # fmt: skip
# What a run writes into its output folder; --overwrite removes these first.
_RUN_FILES = (
    "last.pt", "best.pt", "metrics.jsonl", "args.json", "hierarchy.json", "hierarchy.html",
    "explanations.json", "explanations.html",
)  # fmt: skip
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
    image_size: int | None = None
    augment: bool = True
    device: str | None = None
    amp: bool = True
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    explain: int = 0

    def validate(self) -> None:
        """Check values once, at the boundary, before anything is written; a ``ValueError``
        names the option."""
        choices = {
            "dataset": datasets.DATASETS,
            "loss": LOSSES,
            "soft_variant": SOFT_VARIANTS,
            "node_score": ("mean", "marginal"),
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
        if self.warmup_epochs + self.epochs == 0:
            raise ValueError("nothing to do: --warmup-epochs and --epochs are both 0")
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume continues the run in --output, --overwrite replaces it: pass one of them"
            )
        output = Path(self.output).expanduser()
        if not (self.resume or self.overwrite) and (output / "last.pt").exists():
            raise ValueError(
                f"{output} holds a run (last.pt): pass --resume to continue it, --overwrite to"
                " replace it, or another --output"
            )
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise FileNotFoundError(
                f"{self.pretrained_file}: no such weights file (--pretrained-file)"
            )
        if self.hierarchy == "checkpoint" and not self.checkpoint:
            raise ValueError("--hierarchy checkpoint needs --checkpoint FILE")
        if self.checkpoint and (self.pretrained or self.pretrained_file):
            raise ValueError(
                "--checkpoint already holds weights: drop --pretrained/--pretrained-file"
            )


@dataclass
class _Runtime:
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
    runtime = _start_runtime(config.device)
    try:
        summary = _Run(config, runtime).run()
        if runtime.distributed:
            dist.barrier()  # rank 0 still writes pages and explanations: leave the group together
        return summary
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


def _start_runtime(device_name: str | None) -> _Runtime:
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
        return _Runtime(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    _check_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Runtime(device, dist.get_rank(), dist.get_world_size(), distributed=True)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available")


class _Run:
    """One training run: its state lives here so the epoch steps stay short."""

    def __init__(self, config: TrainConfig, runtime: _Runtime):
        self.runtime = runtime
        self.device = runtime.device
        self.output = Path(config.output).expanduser().resolve()
        source = read_checkpoint(config.checkpoint) if config.checkpoint else None
        if source is not None and config.arch and config.arch != source["arch"]:
            raise ValueError(
                f"--arch {config.arch} but {config.checkpoint} holds a {source['arch']}:"
                " drop --arch"
            )
        self.config = config = self._resolve(config, source)

        # Folders are read at a fixed size; in-memory datasets keep theirs unless --image-size.
        size = (config.image_size,) * 2 if config.image_size else None
        if size is None and config.dataset == "folder":
            size = _default_size(config.arch, source)
        load = {"download": config.download, "image_size": size or (224, 224)}
        self.train_set = datasets.load_dataset(config.dataset, "train", config.data_dir, **load)
        self.test_set = datasets.load_dataset(config.dataset, "test", config.data_dir, **load)
        if config.subset:
            self.train_set = self.train_set.head(config.subset)
        if config.eval_subset:
            self.test_set = self.test_set.head(config.eval_subset)
        if self.train_set.classes != self.test_set.classes:
            raise ValueError(f"{config.dataset}: train and test splits have different classes")
        self.classes = _dataset_classes(config.dataset, self.train_set)
        # A checkpoint whose head already predicts these classes needs no warm-up, and its
        # hierarchy is the default one.
        trained_head = source is not None and _classes_match(
            Hierarchy.from_node_link(source["hierarchy"]), self.classes
        )
        if config.hierarchy is None:
            kind = "checkpoint" if trained_head else "induced"
            self.config = config = dataclasses.replace(config, hierarchy=kind)
        if len(self.train_set) < config.batch_size:
            raise ValueError(
                f"{len(self.train_set)} training images, fewer than one batch"
                f" ({config.batch_size}): lower --batch-size or raise --subset"
            )

        torch.manual_seed(config.seed)
        self.model, self.model_kwargs = self._create_network(source, trained_head)
        self.warmup_epochs = 0 if trained_head else config.warmup_epochs
        self.total_epochs = self.warmup_epochs + config.epochs
        self.data_config = datasets.data_config(
            self.model, size or self.train_set.image_shape[1:], self.model_kwargs.get("in_chans", 3)
        )
        self.train_transform = datasets.BatchTransform(self.data_config, augment=config.augment)
        self.eval_transform = datasets.BatchTransform(self.data_config)
        self.hierarchy = self._fixed_hierarchy(source)

        self.channels_last = self.device.type == "cuda"
        self.model.to(self.device, memory_format=self.channels_last_format)
        self.train_transform.to(self.device)
        self.eval_transform.to(self.device)
        self.amp_dtype = _amp_dtype(self.device) if config.amp else None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        self.train_loader, self.sampler = self._train_loader()
        self.test_loader = self._test_loader()
        self.optimizer = _optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_epochs * len(self.train_loader)
        )
        self.start_epoch = self.saved_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.resume_note = self._resume() if config.resume else None

        self.train_model = self.model
        if runtime.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        self.progress = _Progress(runtime.main, config.quiet)

    # ----------------------------------------------------------------------------- setup
    @property
    def channels_last_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def _resolve(self, config: TrainConfig, source: dict[str, Any] | None) -> TrainConfig:
        """Fill in the settings left to defaults, so args.json records what the run used."""
        arch = config.arch or (source["arch"] if source else DEFAULT_ARCH)
        trained = bool(source or config.pretrained or config.pretrained_file)
        base_lr = _BASE_LR[config.optimizer][trained]
        return dataclasses.replace(
            config,
            output=str(self.output),
            arch=arch,
            lr=config.lr or base_lr * config.batch_size / 256,
            weight_decay=(
                _WEIGHT_DECAY[config.optimizer]
                if config.weight_decay is None
                else config.weight_decay
            ),
            workers=config.workers if config.workers is not None else _default_workers(config),
            device=str(self.device),
        )

    def _create_network(
        self, source: dict[str, Any] | None, trained_head: bool
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The timm network with a head for the dataset's classes, and its timm arguments."""
        import timm

        config = self.config
        num_classes = len(self.classes.names)
        if source is not None:
            model = NBDT.from_checkpoint(source, source=config.checkpoint).model
            if trained_head:
                return model, dict(source["model_kwargs"])
            model.reset_classifier(num_classes)
            return model, {**source["model_kwargs"], "num_classes": num_classes}
        if not timm.is_model(config.arch):
            raise ValueError(
                f"unknown timm architecture {config.arch!r} (--arch; see timm.list_models())"
            )
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        weights: dict[str, Any] = {}
        if config.pretrained_file:
            weights = {
                "pretrained": True,
                "pretrained_cfg_overlay": {"file": config.pretrained_file},
            }
        elif config.pretrained:
            weights = {"pretrained": True}
        try:
            model = timm.create_model(config.arch, **kwargs, **weights)
        except Exception as e:  # timm, the hub and torch.load raise many kinds for bad weights
            if not weights:
                raise
            where = config.pretrained_file or "timm's hub (--pretrained needs internet or a cache)"
            raise ValueError(
                f"cannot load {config.arch} weights from {where}: {one_line(e)}"
            ) from None
        return model, kwargs

    def _fixed_hierarchy(self, source: dict[str, Any] | None) -> Hierarchy | None:
        """The hierarchy known before training, or None when it is induced from the head."""
        kind = self.config.hierarchy
        if kind == "induced":
            return None
        if kind == "checkpoint":
            hierarchy = Hierarchy.from_node_link(source["hierarchy"])
            if not _classes_match(hierarchy, self.classes):
                raise ValueError(
                    f"{self.config.checkpoint}: its hierarchy's classes are not the"
                    f" {self.config.dataset} classes: pass --hierarchy induced|wordnet|random|FILE"
                )
            return hierarchy
        if kind == "wordnet":
            return Hierarchy.wordnet(self.classes)
        if kind == "random":
            return Hierarchy.random(self.classes, seed=self.config.seed)
        return load_hierarchy_for(kind, self.classes.names, self.classes.wnids)

    def _induce(self) -> Hierarchy:
        """The hierarchy induced from the head's weights as they are now."""
        return Hierarchy.induced(self.model, self.classes, wnids=list(self.classes.wnids))

    def _train_loader(
        self,
    ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DistributedSampler]:
        """Shuffled batches; the sampler also serves one process, so any world size sees the
        same global batches (the ranks' shares of each batch interleave)."""
        config, runtime = self.config, self.runtime
        if config.batch_size % runtime.world:
            raise ValueError(
                f"--batch-size {config.batch_size} does not split over {runtime.world} processes"
            )
        sampler = torch.utils.data.DistributedSampler(
            self.train_set,
            num_replicas=runtime.world,
            rank=runtime.rank,
            shuffle=True,
            seed=config.seed,
        )
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=config.batch_size // runtime.world,
            sampler=sampler,
            drop_last=True,
            **_loader_options(config.workers, self.device),
        )
        return loader, sampler

    def _test_loader(self) -> torch.utils.data.DataLoader:
        """Each rank evaluates every world-th image, none twice, so summed counts are exact."""
        runtime = self.runtime
        shard = torch.utils.data.Subset(
            self.test_set, range(runtime.rank, len(self.test_set), runtime.world)
        )
        return torch.utils.data.DataLoader(
            shard,
            batch_size=self.config.batch_size,
            **_loader_options(self.config.workers, self.device),
        )

    def _resume(self) -> str:
        """Restore the run in ``last.pt`` of the output folder, if there is one; say what."""
        path = self.output / "last.pt"
        if not path.is_file():
            return f"no {path} yet: starting afresh"
        checkpoint = read_checkpoint(path, map_location=self.device)
        state = checkpoint.get("train")
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError(f"{path}: a model file without training state: cannot resume from it")
        before = state["config"]
        changed = [
            k
            for k, v in dataclasses.asdict(self.config).items()
            if k not in _OPERATIONAL and before.get(k) != v
        ]
        if changed:
            key = changed[0]
            raise ValueError(
                f"--resume: {key} is {getattr(self.config, key)!r} here but {before.get(key)!r} in"
                f" {path}'s run: resume with the same settings, or use another --output"
            )
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"{path}: cannot restore the run ({one_line(e)})") from None
        self.start_epoch = self.saved_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state["best"]
        if self.hierarchy is None and self.start_epoch >= self.warmup_epochs:
            self.hierarchy = Hierarchy.from_node_link(checkpoint["hierarchy"])
        return f"resuming {path} after epoch {self.start_epoch}"

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Write the run's files (only now: every setting has been checked) and train."""
        config = self.config
        if self.runtime.main:
            self.output.mkdir(parents=True, exist_ok=True)
            if config.overwrite:
                self._remove_previous_run()
            _write_json(self.output / "args.json", dataclasses.asdict(config))
            if self.resume_note:
                self.progress.line(self.resume_note)
        if self.hierarchy is not None:
            self._publish_hierarchy(self.hierarchy)
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.total_epochs):
                self._epoch(epoch)
        except KeyboardInterrupt:
            done = self.saved_epoch
            when = f"after epoch {done}" if done == epoch + 1 else f"during epoch {epoch + 1}"
            where = f"{self.output / 'last.pt'} holds epoch {done}" if done else "no epoch finished"
            raise Interrupted(f"{when}: {where}; continue with --resume") from None
        summary = self._summary()
        if self.runtime.main:
            self._html()
            if config.explain:
                self._explain(config.explain)
            self.progress.summary(summary)
        return summary

    def _epoch(self, epoch: int) -> None:
        config = self.config
        tree_phase = epoch >= self.warmup_epochs
        if tree_phase and self.hierarchy is None:  # no warm-up epoch ran before this one here
            self.hierarchy = self._induce()
            self._publish_hierarchy(self.hierarchy)
        criterion = self._criterion(epoch)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step
        train_stats = self._train_epoch(epoch, criterion)
        hierarchy = self.hierarchy
        if not tree_phase and config.hierarchy == "induced":
            # Evaluate the warm-up with the tree of the head as it is now; the last one stays.
            hierarchy = self._induce()
            self._publish_hierarchy(hierarchy)
            if epoch + 1 == self.warmup_epochs:
                self.hierarchy = hierarchy
        nbdt = self._nbdt(hierarchy)
        test_stats = self._evaluate(nbdt, criterion)
        metrics = {
            "epoch": epoch + 1,
            "phase": "tree" if tree_phase else "warmup",
            "lr": lr,
            **train_stats,
            **test_stats,
        }
        self.history.append(metrics)
        improved = self.best is None or metrics["nbdt_soft_top1"] > self.best["nbdt_soft_top1"]
        if improved:
            self.best = {"epoch": epoch + 1, "nbdt_soft_top1": metrics["nbdt_soft_top1"]}
        if self.runtime.main:
            checkpoint = nbdt.checkpoint(train=self._train_state(epoch + 1))
            # A Ctrl-C here fires after the block: the files are whole, the epoch is reported.
            with _interrupts_deferred():
                self._save(checkpoint, "last.pt")
                self.saved_epoch = epoch + 1
                if improved:
                    self._save(checkpoint, "best.pt")
                _write_lines(self.output / "metrics.jsonl", self.history)
                self.progress.epoch(metrics, self.total_epochs)

    def _criterion(self, epoch: int) -> nn.Module:
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
        if config.loss == "soft":
            loss = SoftTreeSupLoss(self.hierarchy, variant=config.soft_variant, **options)
        else:
            loss = HardTreeSupLoss(self.hierarchy, **options)
        loss.set_epoch(epoch - self.warmup_epochs, config.epochs)
        return loss.to(self.device)

    def _nbdt(self, hierarchy: Hierarchy) -> NBDT:
        return NBDT(
            self.model,
            hierarchy,
            node_score=self.config.node_score,
            arch=self.config.arch,
            model_kwargs=self.model_kwargs,
            data_config=self.data_config,
        ).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int, criterion: nn.Module) -> dict[str, float]:
        self.model.train()
        self.sampler.set_epoch(epoch)
        generator = _seed_epoch(self.config.seed, epoch, self.runtime.rank, self.device)
        sums = torch.zeros(2, device=self.device)  # loss * n, correct
        count = 0
        steps = len(self.train_loader)
        bar = self.progress.bar(steps, f"epoch {epoch + 1}/{self.total_epochs}")
        _sync(self.device)
        start = time.perf_counter()
        for step, (images, targets) in enumerate(self.train_loader, 1):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            inputs = self.train_transform(images, generator)
            inputs = inputs.contiguous(memory_format=self.channels_last_format)
            with self._autocast():
                logits = self.train_model(inputs)
            loss = criterion(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            with torch.no_grad():
                correct = (logits.argmax(1) == targets).sum()
                sums += torch.stack([loss.detach() * len(targets), correct.float()])
            count += len(targets)
            if step % _CHECK_EVERY == 0 or step == steps:
                total = self.runtime.all_reduce(
                    torch.cat([sums, sums.new_tensor([count])])
                ).tolist()
                running = total[0] / total[2]
                if not math.isfinite(running):
                    raise LossDiverged(
                        f"loss became {running} in epoch {epoch + 1} near step {step}: stopped;"
                        f" {self._last_good()}; try a lower --lr"
                    )
                if bar is not None:
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{running:.3f}", top1=f"{100 * total[1] / total[2]:.1f}%")
        _sync(self.device)
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
    def _evaluate(self, nbdt: NBDT, criterion: nn.Module) -> dict[str, float]:
        """Network, NBDT-soft and NBDT-hard top-1 and losses over the test split, from one pass."""
        self.model.eval()
        rules = nbdt.rules
        sums = torch.zeros(5, device=self.device)  # loss, cross-entropy, correct: net, soft, hard
        count = 0
        bar = self.progress.bar(len(self.test_loader), "  test")
        _sync(self.device)
        start = time.perf_counter()
        for images, targets in self.test_loader:
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            inputs = self.eval_transform(images).contiguous(memory_format=self.channels_last_format)
            with self._autocast():
                logits = self.model(inputs)
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
        total = self.runtime.all_reduce(torch.cat([sums, sums.new_tensor([count])])).tolist()
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

    # --------------------------------------------------------------------------- outputs
    def _train_state(self, epoch: int) -> dict[str, Any]:
        """What --resume needs besides the model: random state is derived from (seed, epoch,
        rank) at every epoch start, so the seed and the epoch stand for it."""
        return {
            "epoch": epoch,
            "config": dataclasses.asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def _save(self, checkpoint: dict[str, Any], name: str) -> None:
        try:
            save_checkpoint(checkpoint, self.output / name)
        except OSError as e:
            raise OSError(f"{self.output / name}: not written ({e})") from None

    def _remove_previous_run(self) -> None:
        """--overwrite: drop the files of the run the folder held, so none outlives it."""
        for name in _RUN_FILES:
            (self.output / name).unlink(missing_ok=True)
        for image in self.output.glob("images/test-*.png"):
            image.unlink()

    def _last_good(self) -> str:
        if not self.saved_epoch:
            return "no checkpoint was written"
        return f"{self.output / 'last.pt'} holds the last good epoch, {self.saved_epoch}"

    def _publish_hierarchy(self, hierarchy: Hierarchy) -> None:
        if self.runtime.main:
            self.output.mkdir(parents=True, exist_ok=True)
            hierarchy.save(self.output / "hierarchy.json")

    def _html(self) -> None:
        """hierarchy.html, when the HTML module is installed."""
        try:
            from nbdt.visualize import hierarchy_html
        except ImportError as e:
            self.progress.line(f"note: hierarchy.html skipped ({e})")
            return
        hierarchy_html(
            self.hierarchy, self.output / "hierarchy.html", title=f"{self.config.dataset} hierarchy"
        )

    def _summary(self) -> dict[str, Any]:
        last = self.history[-1]
        return {
            "output": str(self.output),
            "epochs": last["epoch"],
            "warmup_epochs": self.warmup_epochs,
            "top1": last["top1"],
            "nbdt_soft_top1": last["nbdt_soft_top1"],
            "nbdt_hard_top1": last["nbdt_hard_top1"],
            "best": self.best,
            "train_images_per_s": last["train_images_per_s"],
        }

    def _explain(self, count: int) -> None:
        """Explain the first ``count`` test images: text, explanations.json/.html and PNGs."""
        nbdt = self._nbdt(self.hierarchy).eval()
        images, targets = zip(
            *(self.test_set[i] for i in range(min(count, len(self.test_set)))), strict=True
        )
        batch = torch.stack(images).to(self.device)
        explanations = nbdt.explain(self.eval_transform(batch))
        folder = self.output / "images"
        folder.mkdir(exist_ok=True)
        pictures = [datasets.to_pil(image) for image in images]
        records = []
        for i, (picture, target, explanation) in enumerate(
            zip(pictures, targets, explanations, strict=True)
        ):
            path = folder / f"test-{i}.png"
            with atomic_path(path) as tmp:
                picture.save(tmp, format="PNG")
            truth = self.classes.names[int(target)]
            records.append({"image": str(path), "true_label": truth, **explanation.to_dict()})
            self.progress.line(f"{path.name} (true: {truth}) {explanation}")
        _write_json(self.output / "explanations.json", records)
        try:
            from nbdt.visualize import explanation_html
        except ImportError as e:
            self.progress.line(f"note: explanations.html skipped ({e})")
            return
        explanation_html(
            explanations,
            pictures,
            self.output / "explanations.html",
            hierarchy=self.hierarchy,
            title=f"{self.config.arch} on {self.config.dataset}",
        )


# ------------------------------------------------------------------------------- helpers
def _dataset_classes(name: str, dataset: datasets.ImageDataset) -> DatasetClasses:
    """The dataset's names and wnids in the form the hierarchy builders take."""
    return DatasetClasses(name, tuple(dataset.classes), tuple(dataset.wnids))


def _classes_match(hierarchy: Hierarchy, classes: DatasetClasses) -> bool:
    """Whether a hierarchy's leaves are the dataset's classes, by WordNet id or by name."""
    leaves = hierarchy.leaves
    if len(leaves) != len(classes.names):
        return False
    return all(
        leaf.wnid == wnid or leaf.label == name or leaf.id in (wnid, name)
        for leaf, name, wnid in zip(leaves, classes.names, classes.wnids, strict=True)
    )


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


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser factory: no weight decay on biases and norm layers."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay
    )


def _amp_dtype(device: torch.device) -> torch.dtype | None:
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


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so the writes in flight finish; then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


def _write_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


class _Progress:
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
