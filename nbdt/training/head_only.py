"""Head-only fine-tuning behind ``nbdt-train --checkpoint CKPT --hierarchy NEW --head-only``.

The backbone runs once over the training and test images (each process over its own share) and
its pooled features are cached; every epoch after that trains only the classifier head with the
tree-supervision loss, through the one epoch loop (:class:`~nbdt.training.loop.EpochLoop`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nbdt import data as datasets
from nbdt.distributed import Process, shard
from nbdt.features import Features, cache_features
from nbdt.heads import FeatureHead
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training.config import make_optimizer
from nbdt.training.loop import Epoch, EpochLoop, StepContext, Validation, unchanged
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import Plan
from nbdt.training.run_folder import RunFolder


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


def fit_head(plan: Plan, process: Process) -> dict[str, Any]:
    """Refit the checkpoint's head for the plan's hierarchy; write the run folder as
    ``nbdt-train`` does (args.json, last.pt/best.pt, metrics.jsonl, hierarchy, pages)."""
    config = plan.config
    if not plan.trained_head:
        raise ValueError(
            f"--head-only: {config.checkpoint}'s head does not predict the {config.dataset}"
            " classes in their order: train it with nbdt-train first, or drop --head-only"
        )
    device = process.device
    folder = RunFolder(config.output, process.main)
    progress = Progress(process.main, config.quiet)
    context = StepContext(process, config.amp, progress)
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
    names = [f"features-{split}-rank{process.rank}.f32" for split in ("train", "test")]
    try:
        start = time.perf_counter()
        train_features = cache_features(
            model, shard(plan.train_set, process, equal=True), batch_size=config.batch_size,
            folder=cache, name=names[0], progress=progress,
        )  # fmt: skip
        test_features = cache_features(
            model, shard(plan.test_set, process), batch_size=config.batch_size,
            folder=cache, name=names[1], progress=progress,
        )  # fmt: skip
        feature_seconds = time.perf_counter() - start
        progress.line(
            f"cached {len(train_features)} training and {len(test_features)} test features"
            f" per process in {feature_seconds:.1f}s; fitting the head alone"
        )
        train_model: nn.Module = head
        if process.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                head, device_ids=[device.index] if device.type == "cuda" else None
            )
        per_process = config.batch_size // process.world
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
        loop = EpochLoop(
            train_model, optimizer, scheduler, context, epochs=config.epochs, name="head epoch",
            validation=Validation(head, test_loader, transform=unchanged), folder=folder,
            config=config,
        )  # fmt: skip

        def epoch(index: int) -> Epoch:
            criterion = plan.criterion(index, hierarchy, device)
            loader = _batches(train_features, per_process, config.seed + index, shuffle=True)
            return Epoch("head", loader, criterion, lambda: model)

        history = loop.run(epoch)
    finally:
        for name in names:
            (cache / name).unlink(missing_ok=True)
    eval_transform = datasets.BatchTransform(data_config).to(device)
    write_outputs(
        folder, RunResult(model, config, plan.classes, plan.test_set, eval_transform, progress)
    )
    summary = {
        **loop.summary(),
        "feature_seconds": feature_seconds,
        "head_seconds": sum(m["train_images"] / m["train_images_per_s"] for m in history),
    }
    progress.summary(summary)
    return summary
