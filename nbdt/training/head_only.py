"""Head-only fine-tuning behind ``nbdt-train --checkpoint CKPT --hierarchy NEW --head-only``.

The backbone runs once over the training and test images (each process over its own share) and
its pooled features are cached; every epoch after that trains only the classifier head with the
tree-supervision loss, through the trainer's own epoch, evaluation and run-folder steps.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nbdt import data as datasets
from nbdt.distributed import Process, amp_dtype
from nbdt.features import Features, cache_features
from nbdt.heads import FeatureHead
from nbdt.model import NBDT
from nbdt.training.config import make_optimizer
from nbdt.training.loop import LossDiverged, StepContext, train_one_epoch, validate
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import Plan
from nbdt.training.progress import Progress
from nbdt.training.run_folder import RunFolder


def _as_input(features: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Cached features are the head's input as they are (no augmentation, no preprocessing)."""
    return features


def _shard(dataset: torch.utils.data.Dataset, runtime: Process, equal: bool) -> Any:
    """This process's share: every world-th image; ``equal`` cuts all shares to one length so
    that every process takes the same number of steps."""
    stop = len(dataset) // runtime.world * runtime.world if equal else len(dataset)
    return torch.utils.data.Subset(dataset, range(runtime.rank, stop, runtime.world))


def _batches(
    features: Features, batch_size: int, seed: int, shuffle: bool
) -> torch.utils.data.DataLoader:
    """Batches of cached features, each drawn with one index (no per-sample Python calls)."""
    tensors = torch.utils.data.TensorDataset(features.features, features.targets)
    order: Any = torch.utils.data.SequentialSampler(tensors)
    if shuffle:
        order = torch.utils.data.RandomSampler(
            tensors, generator=torch.Generator().manual_seed(seed)
        )
    sampler = torch.utils.data.BatchSampler(order, batch_size, drop_last=shuffle)
    return torch.utils.data.DataLoader(tensors, sampler=sampler, batch_size=None)


def fit_head(plan: Plan, runtime: Process) -> dict[str, Any]:
    """Refit the checkpoint's head for the plan's hierarchy; write the run folder as
    ``nbdt-train`` does (args.json, last.pt/best.pt, metrics.jsonl, hierarchy, pages)."""
    config = plan.config
    if not plan.trained_head:
        raise ValueError(
            f"--head-only: {config.checkpoint}'s head does not predict the {config.dataset}"
            " classes in their order: train it with nbdt-train first, or drop --head-only"
        )
    device = runtime.device
    folder = RunFolder(config.output, runtime.main)
    progress = Progress(runtime.main, config.quiet)
    context = StepContext(runtime, amp_dtype(device) if config.amp else None, progress)
    torch.manual_seed(config.seed)
    network, model_kwargs = plan.network()
    network.to(device)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    data_config = plan.data_config(network, model_kwargs)
    hierarchy = plan.fixed_hierarchy() or plan.induce(network)
    model = NBDT(
        network, hierarchy, node_score=config.node_score, arch=config.arch,
        model_kwargs=model_kwargs, data_config=data_config,
    ).to(device)  # fmt: skip
    head = FeatureHead(network)
    for parameter in head.parameters():
        parameter.requires_grad_(True)

    folder.start(config)
    folder.publish_hierarchy(hierarchy)
    cache = Path(config.output)
    cache.mkdir(parents=True, exist_ok=True)
    names = [f"features-{split}-rank{runtime.rank}.f32" for split in ("train", "test")]
    try:
        start = time.perf_counter()
        train_features = cache_features(
            model, _shard(plan.train_set, runtime, equal=True), batch_size=config.batch_size,
            folder=cache, name=names[0],
        )  # fmt: skip
        test_features = cache_features(
            model, _shard(plan.test_set, runtime, equal=False), batch_size=config.batch_size,
            folder=cache, name=names[1],
        )  # fmt: skip
        feature_seconds = time.perf_counter() - start
        progress.line(
            f"cached {len(train_features)} training and {len(test_features)} test features"
            f" per process in {feature_seconds:.1f}s; fitting the head alone"
        )
        train_model: nn.Module = head
        if runtime.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                head, device_ids=[device.index] if device.type == "cuda" else None
            )
        per_process = config.batch_size // runtime.world
        test_loader = _batches(test_features, per_process, config.seed, shuffle=False)
        optimizer = make_optimizer(config, head)
        steps = len(train_features) // per_process
        if not steps:
            raise ValueError(
                f"{len(train_features)} training images per process, fewer than one batch"
                f" ({per_process}): lower --batch-size or raise --subset"
            )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * steps
        )
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        head_seconds = 0.0
        for epoch in range(config.epochs):
            criterion = plan.criterion(epoch, hierarchy, device)
            lr = optimizer.param_groups[0]["lr"]
            loader = _batches(train_features, per_process, config.seed + epoch, shuffle=True)
            try:
                train_stats = train_one_epoch(
                    train_model, loader, criterion, optimizer, scheduler, _as_input, context,
                    description=f"head epoch {epoch + 1}/{config.epochs}",
                )  # fmt: skip
            except LossDiverged as e:
                raise LossDiverged(
                    f"{e}: stopped; {folder.last_good()}; try a lower --lr"
                ) from None
            head_seconds += train_stats["train_images"] / train_stats["train_images_per_s"]
            test_stats = validate(head, test_loader, criterion, model.rules, _as_input, context)
            metrics = {
                "epoch": epoch + 1, "phase": "head", "lr": lr, **train_stats, **test_stats,
            }  # fmt: skip
            history.append(metrics)
            improved = best is None or metrics["nbdt_soft_top1"] > best["nbdt_soft_top1"]
            if improved:
                best = {"epoch": epoch + 1, "nbdt_soft_top1": metrics["nbdt_soft_top1"]}
            if runtime.main:
                state = {
                    "epoch": epoch + 1, "config": dataclasses.asdict(config),
                    "history": history, "best": best,
                }  # fmt: skip
                folder.save_epoch(
                    model.checkpoint(train=state), history, improved,
                    then=lambda m=metrics: progress.epoch(m, config.epochs),
                )  # fmt: skip
    finally:
        for name in names:
            (cache / name).unlink(missing_ok=True)
    eval_transform = datasets.BatchTransform(data_config).to(device)
    write_outputs(
        folder, RunResult(model, config, plan.classes, plan.test_set, eval_transform, progress)
    )
    last = history[-1]
    summary = {
        "output": str(folder.path),
        "epochs": config.epochs,
        "warmup_epochs": 0,
        "top1": last["top1"],
        "nbdt_soft_top1": last["nbdt_soft_top1"],
        "nbdt_hard_top1": last["nbdt_hard_top1"],
        "best": best,
        "train_images_per_s": last["train_images_per_s"],
        "feature_seconds": feature_seconds,
        "head_seconds": head_seconds,
    }
    progress.summary(summary)
    return summary
