"""The one epoch loop: a training pass, validation (network, NBDT-soft and NBDT-hard top-1), and
the loaders that feed them, shared by ``nbdt-train``, ``--head-only``, fine-tuning after
compression and the head refits of ``nbdt-fix``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt.distributed import Process, loader_options, synchronize
from nbdt.rules import DecisionRules
from nbdt.training.config import TrainConfig
from nbdt.training.progress import Progress

_CHECK_EVERY = 20  # steps between running-loss read-outs (a device sync) and the NaN check


class LossDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------- epoch steps
@dataclass
class StepContext:
    """How batches run here: device, precision (autocast dtype, grad scaler), memory format,
    the process group (sums over ranks) and the progress display."""

    runtime: Process
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
        if step % _CHECK_EVERY == 0 or step == steps:
            total = context.runtime.all_reduce(torch.cat([sums, sums.new_tensor([count])]))
            total = total.tolist()
            running = total[0] / total[2]
            if not math.isfinite(running):
                raise LossDiverged(f"loss became {running} in {description} near step {step}")
            if bar is not None:
                bar.update(step - bar.n)
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
    total = context.runtime.all_reduce(torch.cat([sums, sums.new_tensor([count])])).tolist()
    metrics.all_reduce(context.runtime.all_reduce)
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


def train_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, runtime: Process
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
        **loader_options(config.workers, runtime.device),
    )
    return loader, sampler


def eval_loader(
    dataset: torch.utils.data.Dataset, config: TrainConfig, runtime: Process
) -> torch.utils.data.DataLoader:
    """Each rank evaluates every world-th image, none twice, so summed counts are exact."""
    shard = torch.utils.data.Subset(dataset, range(runtime.rank, len(dataset), runtime.world))
    return torch.utils.data.DataLoader(
        shard, batch_size=config.batch_size, **loader_options(config.workers, runtime.device)
    )


def seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """Seed torch from (seed, epoch, rank) and return the augmentation's generator, seeded too.

    Everything random in an epoch follows from these, so a resumed epoch replays exactly.
    """
    base = ((seed * 1_000_003 + epoch) * 1024 + rank) * 2
    torch.manual_seed(base)
    return torch.Generator(device).manual_seed(base + 1)
