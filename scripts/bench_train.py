"""Throughput of nbdt-train's training loop against a plain PyTorch cross-entropy loop.

Both train the same timm model on the same in-memory Fashion-MNIST images (uint8, 28x28) with
SGD; rounds alternate between the loops so a busy machine slows both alike, and the best round
counts. Also measured: the tree-supervision losses in the trainer, and the data pipeline alone
(uint8 tensors + the batch transform against torchvision's PIL per-image transforms).
Prints JSON; the goal is trainer / plain >= 0.95.

    .venv/bin/python scripts/bench_train.py --arch resnet18 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from nbdt import data
from nbdt.distributed import start_process, synchronize
from nbdt.training.config import TrainConfig, make_optimizer
from nbdt.training.loop import StepContext, train_loader, train_one_epoch
from nbdt.training.plan import make_plan


def plain_loop(model, dataset, config, context: StepContext, args) -> float:
    """Images/s of the textbook loop: DataLoader, normalise, forward (autocast as the trainer
    has it), cross-entropy, SGD."""
    device = context.device
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    mean = torch.tensor(config["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, -1, 1, 1)
    model.train()
    count = 0
    synchronize(device)
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        x = (images.float().div(255).expand(-1, 3, -1, -1) - mean) / std
        with context.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += len(targets)
    loss.item()
    synchronize(device)
    return count / (time.perf_counter() - start)


def data_only(dataset: data.TensorImages, config: dict, args: argparse.Namespace) -> dict:
    """Images/s of the input pipeline alone (best of the rounds), with the same light
    augmentation both ways: uint8 tensors + the batch transform, and PIL + per-image transforms."""
    from torchvision import transforms

    batch_transform = data.BatchTransform(config, augment=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, drop_last=True)
    per_image = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.Grayscale(3),
            transforms.ToTensor(),
            transforms.Normalize(config["mean"], config["std"]),
        ]
    )
    pil_loader = torch.utils.data.DataLoader(
        [(data.to_pil(image), int(target)) for image, target in dataset],
        batch_size=args.batch_size,
        drop_last=True,
        collate_fn=lambda rows: (
            torch.stack([per_image(image) for image, _ in rows]),
            torch.tensor([t for _, t in rows]),
        ),
    )
    pipelines = {
        "tensor_batch_transform": lambda: [batch_transform(images) for images, _ in loader],
        "pil_per_image": lambda: list(pil_loader),
    }
    rates = {}
    for name, pipeline in pipelines.items():
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            pipeline()
            seconds.append(time.perf_counter() - start)
        rates[name] = len(loader) * args.batch_size / min(seconds)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="training steps per round and loop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            output=output,
            arch=args.arch,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            subset=args.batch_size * args.steps,
            eval_subset=args.batch_size,
            warmup_epochs=1,
            epochs=2,
            augment=False,  # the plain loop has none: compare the loops, not augmentation
            device=args.device,
            amp=args.amp,
            quiet=True,
        )
        process = start_process(config.device)
        device = process.device
        plan = make_plan(config, device)
        model, model_kwargs = plan.network()
        context = StepContext(process, args.amp)
        model.to(device, memory_format=context.memory_format)
        data_config = plan.data_config(model, model_kwargs)
        transform = data.BatchTransform(data_config).to(device)
        loader, _ = train_loader(plan.train_set, plan.config, process)
        optimizer = make_optimizer(plan.config, model)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10**6)
        dataset = plan.train_set
        hierarchy = plan.induce(model)
        losses = {
            "trainer_ce": plan.criterion(0, hierarchy, device),
            "trainer_soft_tree": plan.criterion(1, hierarchy, device),
        }
        plan.config = dataclasses.replace(plan.config, loss="hard")
        losses["trainer_hard_tree"] = plan.criterion(1, hierarchy, device)

        def trainer(criterion: torch.nn.Module) -> float:
            stats = train_one_epoch(
                model, loader, criterion, optimizer, scheduler, transform, context
            )
            return stats["train_images_per_s"]

        rates: dict[str, list[float]] = {name: [] for name in ("plain_ce_loop", *losses)}
        trainer(losses["trainer_ce"])  # warm-up: allocator, kernels, caches
        for _ in range(args.rounds):
            rates["plain_ce_loop"].append(plain_loop(model, dataset, data_config, context, args))
            for name, criterion in losses.items():
                rates[name].append(trainer(criterion))
        best = {name: max(values) for name, values in rates.items()}
        result = {
            "arch": args.arch,
            "device": str(device),
            "amp": str(context.amp_dtype) if context.amp_dtype else None,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "batch_size": args.batch_size,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "images_per_s": {k: round(v, 1) for k, v in best.items()},
            "images_per_s_all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "trainer_over_plain": round(best["trainer_ce"] / best["plain_ce_loop"], 3),
            "soft_tree_over_plain": round(best["trainer_soft_tree"] / best["plain_ce_loop"], 3),
            "hard_tree_over_plain": round(best["trainer_hard_tree"] / best["plain_ce_loop"], 3),
            "data_pipeline_images_per_s": {
                k: round(v, 1) for k, v in data_only(dataset, data_config, args).items()
            },
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
