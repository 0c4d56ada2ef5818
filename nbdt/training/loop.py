"""The one epoch loop (:class:`EpochLoop`: training pass, validation, best epoch, checkpoint,
progress line, stop on divergence or Ctrl-C), its steps and the loaders that feed them; run by
``nbdt-train`` (warm-up and tree phases), ``--head-only``, fine-tuning after compression and the
head refits of :mod:`nbdt.intervene`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt._messages import one_line
from nbdt.distributed import Process, amp_dtype, autocast, loader_options, shard, synchronize
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.rules import DecisionRules
from nbdt.training.config import TrainConfig
from nbdt.training.run_folder import RunFolder

_CHECK_EVERY = 20  # steps between running-loss read-outs (a device sync) and the NaN check


class LossDiverged(ArithmeticError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training; the message says which epoch ``last.pt`` holds."""


# ------------------------------------------------------------------------- epoch steps
@dataclass
class StepContext:
    """How batches run here: device, precision (autocast dtype, grad scaler), memory format,
    the process group (sums over ranks) and the progress display."""

    process: Process
    amp: bool = False
    progress: Progress | None = None
    scaler: torch.amp.GradScaler = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if self.progress is None:
            self.progress = Progress(self.process.main, quiet=True)

    @property
    def device(self) -> torch.device:
        return self.process.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the passes (:func:`~nbdt.distributed.amp_dtype`), if ``amp``."""
        return amp_dtype(self.device) if self.amp else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.device.type == "cuda" else torch.preserve_format

    def autocast(self) -> Any:
        return autocast(self.device, self.amp)

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
    synchronize(device)
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
        if bar is not None:
            bar.update()
        if step % _CHECK_EVERY == 0 or step == steps:
            total = context.process.all_reduce(torch.cat([sums, sums.new_tensor([count])]))
            total = total.tolist()
            running = total[0] / total[2]
            if not math.isfinite(running):
                raise LossDiverged(f"loss became {running} in {description} near step {step}")
            if bar is not None:
                bar.set_postfix(loss=f"{running:.3f}", top1=f"{100 * total[1] / total[2]:.1f}%")
    synchronize(device)
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
    """Losses and the per-epoch metrics of :data:`nbdt.evaluation.metrics.METRICS` (network,
    NBDT-soft and NBDT-hard top-1, ...) over ``loader``, from one pass (summed over processes:
    give each rank its own share of the images)."""
    from nbdt.evaluation.metrics import TreeMetrics

    model.eval()
    device = context.device
    metrics = TreeMetrics.for_epochs(rules)
    sums = torch.zeros(2, device=device)  # loss, cross-entropy
    count = 0
    bar = context.progress.bar(len(loader), "  test")
    synchronize(device)
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
            ]
        )
        metrics.update(logits, targets)
        count += len(targets)
        if bar is not None:
            bar.update()
    total = context.process.all_reduce(torch.cat([sums, sums.new_tensor([count])])).tolist()
    metrics.all_reduce(context.process.all_reduce)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    loss, ce, count = total
    return {
        "test_loss": loss / count,
        "test_ce": ce / count,
        **metrics.scalars(),
        "test_images": int(count),
        "test_images_per_s": count / seconds,
    }


# ------------------------------------------------------------------------- the epoch loop
def unchanged(batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The input transform of batches that are the model's input already (cached features)."""
    return batch


@dataclass
class Epoch:
    """One epoch as its caller sets it up: the training pass's batches and loss, and the NBDT
    that is validated and saved, built after the pass (a warm-up induces its tree from the head
    just trained; None: no validation, as in the head refits of :mod:`nbdt.intervene`)."""

    phase: str
    loader: Iterable[tuple[Tensor, Tensor]]
    criterion: Callable[..., Tensor]
    nbdt: Callable[[], NBDT] | None = None
    generator: torch.Generator | None = None
    loss: Callable[..., Tensor] | None = None  # what the pass minimises, when not ``criterion``
    teacher: nn.Module | None = None


@dataclass
class Validation:
    """What validates every epoch: the (unwrapped) model, this process's share of the test
    images and their input transform."""

    model: nn.Module
    loader: Iterable[tuple[Tensor, Tensor]]
    transform: Callable[..., Tensor]


class EpochLoop:
    """The one epoch loop: per epoch a training pass, validation (network, NBDT-soft and
    NBDT-hard top-1), the best epoch by NBDT-soft top-1, last.pt/best.pt/metrics.jsonl through the
    run folder, and the epoch's progress line. A diverging loss stops it with
    :class:`LossDiverged` naming the last good epoch; Ctrl-C with :class:`Interrupted` saying
    which epoch ``last.pt`` holds (a ``resumable`` run: with its optimiser state, to go on with
    ``--resume``).

    ``model`` is what trains (a DistributedDataParallel or compiled wrapper too);
    ``history``, ``best`` and ``start`` are the state a resumed run restores.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        context: StepContext,
        *,
        epochs: int,
        transform: Callable[..., Tensor] = unchanged,
        name: str = "epoch",
        validation: Validation | None = None,
        folder: RunFolder | None = None,
        config: TrainConfig | None = None,
        resumable: bool = False,
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.context, self.transform, self.validation = context, transform, validation
        self.epochs, self.name, self.folder, self.config = epochs, name, folder, config
        self.resumable = resumable
        self.start = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    def run(self, prepare: Callable[[int], Epoch]) -> list[dict[str, Any]]:
        """Run the epochs from ``start`` on, each set up by ``prepare(epoch)``; return the
        history (one row of metrics per epoch, as metrics.jsonl holds)."""
        epoch = self.start
        try:
            for epoch in range(self.start, self.epochs):
                self._epoch(epoch, prepare(epoch))
        except KeyboardInterrupt:
            if self.folder is None:
                raise
            raise Interrupted(self._interrupted(epoch)) from None
        except (ValueError, OSError) as e:  # a bad image found mid-epoch, a full disk
            if self.folder is None or not self.resumable:
                raise
            kind = OSError if isinstance(e, OSError) else ValueError
            raise kind(f"{one_line(e)}; {self.folder.after_error()}") from None
        return self.history

    def _epoch(self, epoch: int, setup: Epoch) -> None:
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step
        try:
            train_stats = train_one_epoch(
                self.model, setup.loader, setup.loss or setup.criterion, self.optimizer,
                self.scheduler, self.transform, self.context, generator=setup.generator,
                description=f"{self.name} {epoch + 1}/{self.epochs}", teacher=setup.teacher,
            )  # fmt: skip
        except LossDiverged as e:
            last = f" {self.folder.last_good()};" if self.folder is not None else ""
            raise LossDiverged(f"{e}: stopped;{last} try a lower --lr") from None
        metrics = {"epoch": epoch + 1, "phase": setup.phase, "lr": lr, **train_stats}
        if self.validation is None or setup.nbdt is None:
            self.history.append(metrics)
            return
        nbdt = setup.nbdt()
        v = self.validation
        metrics.update(
            validate(v.model, v.loader, setup.criterion, nbdt.rules, v.transform, self.context)
        )
        self.history.append(metrics)
        improved = self.best is None or metrics["nbdt_soft_top1"] > self.best["nbdt_soft_top1"]
        if improved:
            self.best = {"epoch": epoch + 1, "nbdt_soft_top1": metrics["nbdt_soft_top1"]}
        if self.folder is not None and self.context.process.main:
            checkpoint = nbdt.checkpoint(train=self._train_state(epoch + 1))
            report = functools.partial(self.context.progress.epoch, metrics, self.epochs)
            self.folder.save_epoch(checkpoint, self.history, improved, then=report)

    def _train_state(self, epoch: int) -> dict[str, Any]:
        """The checkpoint's training state. A resumable run's holds what --resume needs besides
        the model: random state is derived from (seed, epoch, rank) at every epoch start, so the
        seed and the epoch stand for it."""
        state: dict[str, Any] = {"epoch": epoch}
        if self.config is not None:
            state["config"] = dataclasses.asdict(self.config)
        if self.resumable:
            state["optimizer"] = self.optimizer.state_dict()
            state["scheduler"] = self.scheduler.state_dict()
            state["scaler"] = self.context.scaler.state_dict()
        return {**state, "history": self.history, "best": self.best}

    def _interrupted(self, epoch: int) -> str:
        assert self.folder is not None
        done = self.folder.saved_epoch
        when = f"after epoch {done}" if done == epoch + 1 else f"during epoch {epoch + 1}"
        where = (
            f"{self.folder.path / 'last.pt'} holds epoch {done}" if done else "no epoch finished"
        )
        return f"{when}: {where}" + ("; continue with --resume" if self.resumable else "")

    def summary(self, warmup_epochs: int = 0) -> dict[str, Any]:
        """The run's summary: its last epoch's top-1 trio, the best epoch and where it went."""
        last = self.history[-1]
        return {
            "output": str(self.folder.path) if self.folder is not None else None,
            "epochs": last["epoch"],
            "warmup_epochs": warmup_epochs,
            "top1": last["top1"],
            "nbdt_soft_top1": last["nbdt_soft_top1"],
            "nbdt_hard_top1": last["nbdt_hard_top1"],
            "best": self.best,
            "train_images_per_s": last["train_images_per_s"],
        }


def train_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, process: Process
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DistributedSampler]:
    """Shuffled batches; the sampler also serves one process, so any world size sees the
    same global batches (the ranks' shares of each batch interleave)."""
    if config.batch_size % process.world:
        raise ValueError(
            f"--batch-size {config.batch_size} does not split over {process.world} processes"
        )
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=process.world, rank=process.rank, shuffle=True, seed=config.seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size // process.world,
        sampler=sampler,
        drop_last=True,
        **loader_options(config.workers, process.device),
    )
    return loader, sampler


def eval_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, process: Process
) -> torch.utils.data.DataLoader:
    """Each rank evaluates its :func:`~nbdt.distributed.shard`, so summed counts are exact."""
    return torch.utils.data.DataLoader(
        shard(dataset, process),
        batch_size=config.batch_size,
        **loader_options(config.workers, process.device),
    )


def seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """Seed torch from (seed, epoch, rank) and return the augmentation's generator, seeded too.

    Everything random in an epoch follows from these, so a resumed epoch replays exactly.
    """
    base = ((seed * 1_000_003 + epoch) * 1024 + rank) * 2
    torch.manual_seed(base)
    return torch.Generator(device).manual_seed(base + 1)
