"""GPU check of the mission's configuration: one JSON document per part on stdout.

Parts (``--parts``, by number or name; all by default):

1. ``throughput``: a timm network (random init, ``--classes`` outputs) trained on synthetic
   images already on the device, bf16 autocast and channels-last on CUDA, with and without
   ``torch.compile``: images/s and peak memory of (a) a plain PyTorch loop with cross-entropy,
   (b) the same loop with nbdt's SoftTreeSupLoss on a tree induced from the head, (c) nbdt-train's
   own loop (``train_one_epoch``); at ``--batch-size`` and at the largest batch that fits (doubling
   up to ``--max-batch``). Goals: (b) >= 0.97 x (a), (c) >= 0.95 x (b).
2. ``loader``: an ImageFolder of JPEGs (random sizes) read through nbdt's folder dataset, the
   trainer's loader and its batch transform, per worker count: images/s of loading alone against
   the GPU step rate of part 1, and which of the two is the limit.
3. ``passes``: ``nbdt.evaluate``, ``node_examples``, ``explain(evidence=True)`` and
   ``export_onnx`` on the device: their times, and their agreement with the CPU (float32 on both).
4. ``torchrun``: nbdt-train's loop under DistributedDataParallel, one process per GPU (NCCL; gloo
   on the CPU): world size and images/s.

Progress goes to stderr. A part that fails prints a document with ``error``; the others run.
WordNet is not needed: the classes carry synthetic ids, and where WordNet is missing the
ImageFolder's class folders are given such ids too (nbdt.data would raise).

    PYTHONPATH=. python3 scripts/gpu_check.py                       # CUDA, the mission's sizes
    PYTHONPATH=. python3 scripts/gpu_check.py --device cpu --arch resnet18 --image-size 64 \\
        --batch-size 8 --steps 2 --warmup-steps 1 --classes 10 --images 40 --workers 0,2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# ---- nbdt internals: every import of the package is here, as modules, so that a restructured
# package is repointed in this one block.
from nbdt import _messages, builders, distributed, wordnet
from nbdt import data as datasets
from nbdt import loss as losses
from nbdt import model as nbdt_model
from nbdt.deploy import export
from nbdt.deploy import runtime as onnx_runtime
from nbdt.evaluation import evaluate as evaluation
from nbdt.evidence import examples as evidence
from nbdt.training import config as train_config
from nbdt.training import loop as train_loop

# ---- end of the nbdt imports

PARTS = ("throughput", "loader", "passes", "torchrun")
GOALS = {"soft_tree_over_plain": 0.97, "trainer_over_soft_tree": 0.95}
GIB = 2**30


# ------------------------------------------------------------------------------ helpers
def log(message: str) -> None:
    """A progress line on stderr (stdout holds the JSON documents only)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=1), flush=True)


def one_line(error: BaseException) -> str:
    """The error's type and the line of its message that says what was wrong."""
    return f"{type(error).__name__}: {_messages.one_line(error)}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 2)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``function()`` and its wall time in seconds, the device synchronised on both ends."""
    sync(device)
    start = time.perf_counter()
    value = function()
    sync(device)
    return value, time.perf_counter() - start


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 convolutions and matmuls without TF32 on CUDA, for comparisons with the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synthetic_classes(count: int) -> tuple[list[str], list[str]]:
    """Class names and synthetic ids (no WordNet id): no builder or dataset reads WordNet."""
    names = [f"class_{i:04d}" for i in range(count)]
    return names, [wordnet.SYNTHETIC_PREFIX + name for name in names]


def synthetic_images(count: int, size: int, generator: torch.Generator) -> Tensor:
    """uint8 (count, 3, size, size) images: smooth random colour fields, unlike one another."""
    coarse = torch.randint(0, 256, (count, 3, 7, 7), generator=generator).float()
    images = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8)


def network_and_tree(args: argparse.Namespace) -> tuple[nn.Module, Any, float]:
    """The timm network (random init, seeded) and the tree induced from its head, with the
    induction's seconds."""
    import timm

    torch.manual_seed(args.seed)
    model = timm.create_model(args.arch, pretrained=False, num_classes=args.classes)
    names, ids = synthetic_classes(args.classes)
    start = time.perf_counter()
    tree = builders.build("induced", names, weights=model, wnids=ids)
    return model, tree, time.perf_counter() - start


def tree_summary(tree: Any, seconds: float) -> dict[str, Any]:
    return {
        "classes": tree.num_classes,
        "inner_nodes": len(tree.inner_nodes),
        "max_depth": tree.max_depth,
        "induce_s": round(seconds, 2),
    }


def soft_tree_loss(tree: Any) -> nn.Module:
    """SoftTreeSupLoss with nbdt-train's default settings."""
    defaults = train_config.TrainConfig(output=".")
    return losses.SoftTreeSupLoss(
        tree,
        tree_weight=defaults.tree_weight,
        ce_weight=defaults.ce_weight,
        node_score=defaults.node_score,
        variant=defaults.soft_variant,
    )


def optimizer_for(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """nbdt-train's optimiser (timm's SGD, Nesterov) and a cosine schedule; a small rate, so
    random labels do not make the loss diverge (the speed does not depend on it)."""
    config = train_config.TrainConfig(output=".", lr=1e-3, weight_decay=5e-4)
    optimizer = train_config.make_optimizer(config, model)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10**6)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in (
        "timm", "numpy", "scikit-learn", "nltk", "grad-cam", "matplotlib", "onnx",
        "onnxruntime", "onnxscript", "pillow",
    ):  # fmt: skip
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def grad_cam_problem() -> str | None:
    """Why grad-cam cannot be imported (e.g. matplotlib, which it imports, is missing), or None."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except Exception as e:  # an import can fail with any error
        return one_line(e)
    return None


def wordnet_problem() -> str | None:
    """Why nbdt cannot load WordNet here (no nltk, no data files), or None."""
    try:
        wordnet.load_info()
    except (ImportError, wordnet.WordNetNotFound) as e:
        return one_line(e)
    return None


# ----------------------------------------------------------------------- 0. environment
def part_environment(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(args.device)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_cores": cores(),
        "packages": package_versions(),
        "wordnet": wordnet_problem() or "available",
        "grad_cam": grad_cam_problem() or "available",
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpus=torch.cuda.device_count(),
            gpu_memory_gib=round(properties.total_memory / GIB, 1),
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    state["wordnet_missing"] = info["wordnet"] != "available"
    return info


# ------------------------------------------------------------------------ 1. throughput
class Loops:
    """The three training loops over one synthetic batch already on the device."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, tree: Any, device: torch.device):
        self.device = device
        self.context = train_loop.StepContext(distributed.Process(device), args.amp)
        self.model = model.to(device, memory_format=self.context.memory_format)
        self.optimizer, self.scheduler = optimizer_for(model)
        self.cross_entropy = nn.CrossEntropyLoss()
        self.tree_loss = soft_tree_loss(tree).to(device)
        size = (args.image_size, args.image_size)
        config = datasets.data_config(model, size)
        self.transform = datasets.BatchTransform(config).to(device)  # no augmentation: as (a)
        self.mean = torch.tensor(config["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(config["std"], device=device).view(1, -1, 1, 1)
        self.args = args
        self.images = self.targets = torch.empty(0)

    def set_batch(self, batch_size: int) -> None:
        generator = torch.Generator().manual_seed(self.args.seed)
        self.images = synthetic_images(batch_size, self.args.image_size, generator).to(self.device)
        self.targets = torch.randint(0, self.args.classes, (batch_size,), generator=generator)
        self.targets = self.targets.to(self.device)

    def plain(self, model: nn.Module, criterion: nn.Module, steps: int) -> None:
        """The textbook loop: normalise, forward (autocast), loss, backward, SGD step."""
        model.train()
        for _ in range(steps):
            x = (self.images.float() / 255 - self.mean) / self.std
            x = x.contiguous(memory_format=self.context.memory_format)
            with self.context.autocast():
                logits = model(x)
            loss = criterion(logits.float(), self.targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def trainer(self, model: nn.Module, steps: int) -> None:
        """nbdt-train's loop over ``steps`` batches, with the soft tree loss."""
        batches = [(self.images, self.targets)] * steps
        train_loop.train_one_epoch(
            model, batches, self.tree_loss, self.optimizer, self.scheduler, self.transform,
            self.context,
        )  # fmt: skip

    def variants(self, model: nn.Module) -> dict[str, Callable[[int], None]]:
        return {
            "a_plain_ce": lambda steps: self.plain(model, self.cross_entropy, steps),
            "b_plain_soft_tree": lambda steps: self.plain(model, self.tree_loss, steps),
            "c_nbdt_train": lambda steps: self.trainer(model, steps),
        }


def measure(
    loops: Loops, model: nn.Module, batch_size: int, steps: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """Best images/s over ``rounds`` (the variants alternate within a round), peak memory of
    the timed steps, and each variant's warm-up seconds (compilation included)."""
    device = loops.device
    loops.set_batch(batch_size)
    rates: dict[str, list[float]] = {}
    memory: dict[str, float | None] = {}
    warmup_s: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for name, run in loops.variants(model).items():
            log(f"  batch {batch_size}, {name}, round {round_ + 1}/{rounds}")
            _, seconds = timed(lambda run=run: run(warmup), device)
            warmup_s.setdefault(name, []).append(round(seconds, 2))
            reset_peak(device)
            _, seconds = timed(lambda run=run: run(steps), device)
            rates.setdefault(name, []).append(steps * batch_size / seconds)
            memory[name] = peak_gib(device)
    best = {name: max(values) for name, values in rates.items()}
    ratios = {
        "soft_tree_over_plain": best["b_plain_soft_tree"] / best["a_plain_ce"],
        "trainer_over_soft_tree": best["c_nbdt_train"] / best["b_plain_soft_tree"],
    }
    return {
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "images_per_s": {name: round(value, 1) for name, value in best.items()},
        "images_per_s_all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "peak_memory_gib": memory,
        "warmup_s": warmup_s,
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "goals": {f"{name} >= {goal}": ratios[name] >= goal for name, goal in GOALS.items()},
    }


def largest_batch(loops: Loops, start: int, cap: int) -> tuple[int, list[dict[str, Any]]]:
    """Double the batch from ``start`` until a training step runs out of memory or ``cap``."""
    largest, tried = start, []
    batch_size = start * 2
    while batch_size <= cap:
        log(f"  trying batch {batch_size}")
        fits = True
        try:
            loops.set_batch(batch_size)
            timed(lambda: loops.plain(loops.model, loops.tree_loss, 2), loops.device)
        except torch.cuda.OutOfMemoryError:
            fits = False
        # after the except block: the traceback no longer holds the step's tensors
        loops.images = loops.targets = torch.empty(0)
        loops.optimizer.zero_grad(set_to_none=True)
        free_memory(loops.device)
        tried.append({"batch_size": batch_size, "fits": fits})
        if not fits:
            break
        largest = batch_size
        batch_size *= 2
    return largest, tried


def scaled_steps(args: argparse.Namespace, batch_size: int) -> tuple[int, int]:
    """(timed, warm-up) steps at a larger batch: about as many images as at --batch-size,
    but at least 10 timed and 3 warm-up steps."""
    factor = args.batch_size / batch_size
    return (
        max(min(args.steps, 10), math.ceil(args.steps * factor)),
        max(min(args.warmup_steps, 3), math.ceil(args.warmup_steps * factor)),
    )


def part_throughput(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(args.device)
    model, tree, induce_s = network_and_tree(args)
    loops = Loops(args, model, tree, device)
    amp = loops.context.amp_dtype
    out: dict[str, Any] = {
        "device": str(device),
        "arch": args.arch,
        "image_size": args.image_size,
        "amp": str(amp).removeprefix("torch.") if amp else None,
        "channels_last": loops.context.memory_format == torch.channels_last,
        "tree": tree_summary(tree, induce_s),
        "goals": GOALS,
        "runs": [],
    }
    runs: list[dict[str, Any]] = out["runs"]

    def run(batch_size: int, compiled: bool, steps: int, warmup: int) -> None:
        label = f"batch {batch_size}, {'compiled' if compiled else 'eager'}"
        log(f"throughput: {label}")
        network = torch.compile(model) if compiled else model
        try:
            result = measure(loops, network, batch_size, steps, warmup, args.rounds)
        except Exception as e:  # one configuration failing (OOM, a compiler error) is a finding
            log(traceback.format_exc())
            result = {"batch_size": batch_size, "error": one_line(e)}
        runs.append({"compiled": compiled, **result})
        loops.images = loops.targets = torch.empty(0)
        free_memory(device)

    run(args.batch_size, False, args.steps, args.warmup_steps)
    if args.compile:
        run(args.batch_size, True, args.steps, args.warmup_steps)
        first = runs[-1].get("warmup_s", {}).get("a_plain_ce", [None])[0]
        out["compile_and_first_warmup_s"] = first  # the compile time, near enough
    else:
        out["compile"] = "skipped (--no-compile, the default on the CPU)"
    if device.type == "cuda" and args.max_batch > args.batch_size:
        log("throughput: the largest batch that fits")
        largest, tried = largest_batch(loops, args.batch_size, args.max_batch)
        out["largest_batch"] = {
            "batch_size": largest,
            "tried": tried,
            "capped": all(t["fits"] for t in tried),
        }
        if largest > args.batch_size:
            run(largest, False, *scaled_steps(args, largest))
    else:
        out["largest_batch"] = "skipped (CUDA only, or --max-batch <= --batch-size)"
    failed = [
        f"batch {r['batch_size']}{', compiled' if r['compiled'] else ''}"
        for r in runs
        if "error" in r
    ]
    if failed:
        out["error"] = f"failed: {', '.join(failed)}"
    trainer_rates = [
        (r["images_per_s"]["c_nbdt_train"], r["batch_size"], r["compiled"])
        for r in runs
        if "images_per_s" in r
    ]
    if trainer_rates:
        rate, batch_size, compiled = max(trainer_rates)
        state["gpu_step"] = {
            "images_per_s": rate,
            "source": f"part 1 (c) nbdt-train loop, batch {batch_size}"
            f"{', compiled' if compiled else ''} (the fastest)",
        }
    return out


# ----------------------------------------------------------------------------- 2. loader
def _write_jpeg(task: tuple[str, int, int, int]) -> None:
    """One JPEG: a smooth random colour field with some noise (photo-like entropy)."""
    from PIL import Image

    path, width, height, seed = task
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    noisy = field.astype(np.int16) + rng.integers(-16, 17, field.shape, dtype=np.int16)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_image_folder(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``root/train/class_k/*.jpg``: --images JPEGs over --image-classes classes, each side
    random in [--min-side, --max-side]."""
    rng = np.random.default_rng(args.seed)
    names, _ = synthetic_classes(args.image_classes)
    tasks = []
    for i in range(args.images):
        folder = root / "train" / names[i % len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        width, height = rng.integers(args.min_side, args.max_side + 1, 2)
        tasks.append((str(folder / f"{i:06d}.jpg"), int(width), int(height), args.seed + i))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(cores(), 16)) as pool:
        list(pool.map(_write_jpeg, tasks, chunksize=16))
    size = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    return {
        "images": args.images,
        "classes": args.image_classes,
        "sides": [args.min_side, args.max_side],
        "megabytes": round(size / 2**20, 1),
        "write_s": round(time.perf_counter() - start, 1),
    }


@contextlib.contextmanager
def synthetic_folder_classes(active: bool) -> Iterator[None]:
    """Without WordNet, nbdt cannot resolve an ImageFolder's class names (``load_dataset``
    raises); give every folder the synthetic id nbdt gives names WordNet lacks, meanwhile."""
    if not active:
        yield
        return
    original = wordnet.resolutions

    def resolutions(names: Any, overrides: Any = None, *, warn: bool = False) -> list[Any]:
        return [
            wordnet.Resolution(str(n), wordnet.SYNTHETIC_PREFIX + str(n), "synthetic")
            for n in names
        ]

    wordnet.resolutions = resolutions
    try:
        yield
    finally:
        wordnet.resolutions = original


def load_folder(root: Path, size: int, wordnet_missing: bool) -> tuple[Any, str]:
    """nbdt's folder dataset (train split) read at ``size``, and how its classes were named."""
    with synthetic_folder_classes(wordnet_missing):
        dataset = datasets.load_dataset("folder", "train", root, image_size=(size, size))
    how = (
        "WordNet missing: class folders given synthetic ids by this script (nbdt.data resolves"
        " folder names through WordNet and raises without it)"
        if wordnet_missing
        else "nbdt's own resolution through WordNet"
    )
    return dataset, how


def loading_rates(
    loader: torch.utils.data.DataLoader,
    sampler: Any,
    transform: nn.Module,
    context: Any,
    epochs: int,
) -> list[float]:
    """Images/s of each epoch: read, to the device, the trainer's batch transform there."""
    rates = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        count = 0

        def one_epoch() -> None:
            nonlocal count
            for images, targets in loader:
                context.inputs(images, transform)
                targets.to(context.device, non_blocking=True)
                count += len(targets)

        _, seconds = timed(one_epoch, context.device)
        rates.append(round(count / seconds, 1))
    return rates


def part_loader(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    import timm

    device = torch.device(args.device)
    root = Path(args.out) / "folder"
    shutil.rmtree(root, ignore_errors=True)
    log(f"loader: writing {args.images} JPEGs into {root}")
    out: dict[str, Any] = {"device": str(device), "folder": make_image_folder(root, args)}
    dataset, out["class_names"] = load_folder(root, args.image_size, state["wordnet_missing"])
    with torch.device("meta"):  # the network only for its data config
        network = timm.create_model(args.arch, pretrained=False, num_classes=args.image_classes)
    config = datasets.data_config(network, (args.image_size, args.image_size))
    transform = datasets.BatchTransform(config, augment=True).to(device)  # as nbdt-train's
    context = train_loop.StepContext(distributed.Process(device))
    runtime = context.process
    batch_size = min(args.batch_size, len(dataset))
    rates: dict[str, Any] = {}
    for workers in args.workers:
        config_w = train_config.TrainConfig(
            output=str(args.out), dataset="folder", batch_size=batch_size, workers=workers
        )
        loader, sampler = train_loop.train_loader(dataset, config_w, runtime)
        epochs = 1 if workers == 0 else 2  # the second epoch reuses the persistent workers
        log(f"loader: {workers} workers, {epochs} epoch(s)")
        rates[str(workers)] = loading_rates(loader, sampler, transform, context, epochs)
        del loader
        gc.collect()
    out["loader"] = {
        "batch_size": batch_size,
        "image_size": args.image_size,
        "pin_memory": device.type == "cuda",
        "persistent_workers": True,
        "augment_and_normalise_on": str(device),
    }
    out["images_per_s_by_workers"] = {w: r[-1] for w, r in rates.items()}
    out["first_epoch_images_per_s_by_workers"] = {w: r[0] for w, r in rates.items()}
    most = max(args.workers)
    variants: dict[str, Any] = {}
    if most > 0:
        options = {"no_pinned_memory": (False, True), "no_persistent_workers": (True, False)}
        for name, (pin, persistent) in options.items():
            if name == "no_pinned_memory" and device.type != "cuda":
                variants[name] = "skipped (pinned memory is for CUDA)"
                continue
            pin = pin and device.type == "cuda"
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=1, rank=0, shuffle=True
            )
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                num_workers=most, pin_memory=pin, persistent_workers=persistent,
            )  # fmt: skip
            log(f"loader: {most} workers, {name}")
            variants[name] = {
                "workers": most,
                "images_per_s": loading_rates(loader, sampler, transform, context, 2)[-1],
            }
            del loader
            gc.collect()
    out["variants_at_most_workers"] = variants
    best_workers, best = max(out["images_per_s_by_workers"].items(), key=lambda kv: kv[1])
    out["best"] = {"workers": int(best_workers), "images_per_s": best}
    out.update(verdict(best, int(best_workers), state.get("gpu_step"), variants, rates))
    shutil.rmtree(root, ignore_errors=True)
    return out


def verdict(
    loading: float,
    workers: int,
    gpu_step: dict[str, Any] | None,
    variants: dict[str, Any],
    rates: dict[str, Any],
) -> dict[str, Any]:
    """Which is the limit, the loader or the GPU step, and what would lift the loader."""
    if gpu_step is None:
        return {
            "gpu_step": None,
            "verdict": "unknown: no GPU step rate (run part 1, throughput, in the same call)",
        }
    step = gpu_step["images_per_s"]
    out: dict[str, Any] = {"gpu_step": gpu_step, "loader_over_gpu_step": round(loading / step, 3)}
    if loading >= step:
        out["verdict"] = (
            f"the GPU step is the limit: the loader delivers {loading:.0f} images/s with"
            f" {workers} workers, the training step takes {step:.0f}"
        )
        return out
    out["verdict"] = (
        f"the loader is the limit: {loading:.0f} images/s with {workers} workers against the"
        f" GPU step's {step:.0f} ({loading / step:.0%})"
    )
    per_worker = {int(w): r[-1] / max(int(w), 1) for w, r in rates.items() if int(w) > 0}
    scaling = (
        f"{min(per_worker.values()):.0f}-{max(per_worker.values()):.0f} images/s per worker"
        if per_worker
        else "no worker counts measured"
    )
    measured = {
        name: v["images_per_s"] for name, v in variants.items() if isinstance(v, dict)
    }  # the trainer's loader has both on: what turning each off costs
    out["what_would_lift_it"] = {
        "normalising_on_the_gpu": "in use: uint8 batches cross to the device; augmentation and"
        " normalisation run there (nbdt.data.BatchTransform)",
        "pinned_memory": f"in use on CUDA; without it: {measured.get('no_pinned_memory')} images/s",
        "persistent_workers": f"in use; without them (second epoch): "
        f"{measured.get('no_persistent_workers')} images/s",
        "more_workers": f"decoding is per worker ({scaling}), {cores()} CPU cores here",
        "DALI": "NVIDIA DALI decodes the JPEGs on the GPU (nvJPEG) and resizes there: the CPU"
        " no longer decodes",
        "FFCV": "FFCV's pre-written dataset file (raw or re-encoded smaller JPEGs, fast reader):"
        " less decoding and I/O per image",
        "pre_resized_images": "images stored at the training size (short side 224-256 px)"
        " decode several times faster than 256-500 px originals",
    }
    return out


# ----------------------------------------------------------------------------- 3. passes
def close(a: Tensor, b: Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


class Passes:
    """nbdt's other passes on the device and on the CPU, over the same synthetic inputs: one
    random network and its induced tree, copied to both."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        network, self.tree, self.induce_s = network_and_tree(args)
        self.config = datasets.data_config(network, (args.image_size, args.image_size))
        self.cpu = nbdt_model.NBDT(
            network, self.tree, arch=args.arch, model_kwargs={"num_classes": args.classes},
            data_config=self.config,
        ).eval()  # fmt: skip
        self.ours = copy.deepcopy(self.cpu).to(self.device)
        generator = torch.Generator().manual_seed(args.seed)
        self.images = synthetic_images(args.eval_images, args.image_size, generator)
        transform = datasets.BatchTransform(self.config)
        self.batch = transform(self.images[: args.explain_batch])  # float32, on the CPU
        self.dataset: Any = None
        self.soft = self.hard = None

    def both(self) -> list[tuple[str, Any, torch.device]]:
        """(name, model, device to synchronise) of the device and of the CPU."""
        return [("device", self.ours, self.device), ("cpu", self.cpu, torch.device("cpu"))]

    def forward(self) -> dict[str, Any]:
        """Soft probabilities and hard paths of the batch on both; the evaluation's labels."""
        cpu, ours, batch, device = self.cpu, self.ours, self.batch, self.device
        with ieee_float32(), torch.inference_mode():
            on_device = batch.to(device)
            timed(lambda: ours.logits(on_device), device)  # kernels chosen, memory allocated
            logits = {"cpu": cpu.logits(batch), "device": ours.logits(on_device).float()}
            soft = {
                "cpu": cpu.rules.soft(logits["cpu"]).exp(),
                "device": ours.rules.soft(logits["device"]).exp().cpu(),
            }
            hard = {
                "cpu": cpu.rules.hard(logits["cpu"]),
                "device": ours.rules.hard(logits["device"]).cpu(),
            }
            differ = hard["cpu"] != hard["device"]
            margins = hard_path_margins(cpu.rules, logits["cpu"])
            # the labels of the evaluation: the device's float32 NBDT-soft predictions
            transform = datasets.BatchTransform(self.config)
            labels = torch.cat(
                [ours(transform(part).to(device)).argmax(1).cpu() for part in self.images.split(64)]
            )
        names, ids = synthetic_classes(self.args.classes)
        self.dataset = datasets.TensorImages(self.images, labels, names, ids)
        self.soft, self.hard = soft["device"], hard["device"]
        same = len(batch) - int(differ.sum())
        return {
            "batch": len(batch),
            "max_abs_logit_difference": close(logits["cpu"], logits["device"]),
            "max_abs_soft_probability_difference": close(soft["cpu"], soft["device"]),
            "soft_within_1e-3": close(soft["cpu"], soft["device"]) <= 1e-3,
            "max_abs_soft_log_probability_difference": close(
                soft["cpu"].log(), soft["device"].log()
            ),
            "same_hard_paths": f"{same}/{len(batch)}",
            "hard_paths_agree": same == len(batch),
            "smallest_hard_path_margin": float(margins.min()),
            "margins_where_hard_paths_differ": [float(m) for m in margins[differ][:10]],
        }

    def evaluate(self) -> dict[str, Any]:
        """nbdt.evaluate on both: seconds, top-1 against the labels, agreements."""
        out: dict[str, Any] = {"images": len(self.dataset)}
        for where, model, device in self.both():
            result, seconds = timed(
                lambda model=model: evaluation.evaluate(
                    model, self.dataset, batch_size=self.args.batch_size, distributed=False
                ),
                device,
            )
            variants = result.metrics["variants"]
            out[where] = {
                "seconds": round(seconds, 2),
                "top1_against_device_float32_soft": {v: variants[v]["top1"] for v in variants},
                "agreement": result.metrics["agreement"],
            }
        key = "top1_against_device_float32_soft"
        out["max_top1_difference_points"] = max(
            abs(out["device"][key][v] - top1) for v, top1 in out["cpu"][key].items()
        )
        return out

    def node_examples(self) -> dict[str, Any]:
        """node_examples on both: seconds, and how many of the chosen images are the same."""
        found, seconds = {}, {}
        with ieee_float32():
            for where, model, device in self.both():
                found[where], seconds[where] = timed(
                    lambda model=model: evidence.node_examples(
                        model, self.dataset, batch_size=self.args.batch_size, distributed=False
                    ),
                    device,
                )
        chosen = found["device"].index == found["cpu"].index
        return {
            "images": len(self.dataset),
            "seconds": {w: round(s, 2) for w, s in seconds.items()},
            "same_choices": f"{int(chosen.sum())}/{chosen.size}",
            "same_choices_share": round(float(chosen.mean()), 4),
        }

    def explain(self) -> dict[str, Any]:
        """explain(evidence=True) on both: seconds, paths, probabilities, saliency maps."""
        problem = grad_cam_problem()
        if problem is not None:
            return {"skipped": f"grad-cam cannot be imported: {problem}"}
        explained, seconds = {}, {}
        with ieee_float32():
            for where, model, device in self.both():
                x = self.batch.to(device)
                explained[where], seconds[where] = timed(
                    lambda model=model, x=x: model.explain(x, evidence=True), device
                )
        pairs = list(zip(explained["device"], explained["cpu"], strict=True))
        same_paths = sum(
            [(s.node_id, s.child_id) for s in a.path] == [(s.node_id, s.child_id) for s in b.path]
            for a, b in pairs
        )
        maps = [
            float(np.abs(s.saliency - t.saliency).max())
            for a, b in pairs
            for s, t in zip(a.path, b.path, strict=False)
            if s.node_id == t.node_id and s.saliency is not None and t.saliency is not None
        ]
        return {
            "batch": len(pairs),
            "seconds": {w: round(s, 2) for w, s in seconds.items()},
            "same_paths": f"{same_paths}/{len(pairs)}",
            "max_abs_probability_difference": max(
                abs(a.probability - b.probability) for a, b in pairs
            ),
            "max_abs_saliency_difference": max(maps) if maps else None,
        }

    def export(self) -> dict[str, Any]:
        """export_onnx of the device's model; ONNX Runtime (CPU) against the device's outputs."""
        path = Path(self.args.out) / "model.onnx"
        before = str(next(self.ours.parameters()).device)
        try:
            _, seconds = timed(lambda: export.export_onnx(self.ours, path), self.device)
        except ImportError as e:
            return {"skipped": one_line(e)}
        out: dict[str, Any] = {
            "export_s": round(seconds, 2),
            "megabytes": round(path.stat().st_size / 2**20, 1),
            # export_onnx traces the network on the CPU: where it leaves the model
            "model_device": {"before": before, "after": str(next(self.ours.parameters()).device)},
        }
        try:
            session = onnx_runtime.OnnxNBDT(path)
        except ImportError as e:
            return {**out, "onnxruntime": f"skipped: {one_line(e)}"}
        outputs, run_s = timed(lambda: session.run(self.batch.numpy()), torch.device("cpu"))
        path.unlink(missing_ok=True)
        if self.soft is None or self.hard is None:
            return {**out, "onnxruntime_cpu_s": round(run_s, 2)}
        soft = torch.from_numpy(outputs["class_log_probs"]).exp()
        hard = torch.from_numpy(outputs["hard_class"])
        return {
            **out,
            "onnxruntime_cpu_s": round(run_s, 2),
            "max_abs_soft_probability_difference_to_device": close(soft, self.soft),
            "soft_within_1e-3": close(soft, self.soft) <= 1e-3,
            "same_hard_paths": f"{int((hard == self.hard).sum())}/{len(hard)}",
        }


def part_passes(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    passes = Passes(args)
    out: dict[str, Any] = {
        "device": str(passes.device),
        "reference": "cpu",
        "arch": args.arch,
        "image_size": args.image_size,
        "tree": tree_summary(passes.tree, passes.induce_s),
        "float32": "IEEE float32 on both (TF32 off) except nbdt.evaluate, which runs under the"
        " trainer's bf16 autocast on CUDA",
    }
    steps = {
        "forward": passes.forward,
        "evaluate": passes.evaluate,
        "node_examples": passes.node_examples,
        "explain_evidence": passes.explain,
        "export_onnx": passes.export,
    }
    for name, step in steps.items():
        log(f"passes: {name}")
        try:
            out[name] = step()
        except Exception as e:  # one failing pass must not hide the others' results
            log(traceback.format_exc())
            out[name] = {"error": one_line(e)}
    errors = [name for name, value in out.items() if isinstance(value, dict) and "error" in value]
    if errors:
        out["error"] = f"failed: {', '.join(errors)}"
    Path(args.out, "model.onnx").unlink(missing_ok=True)
    return out


def hard_path_margins(rules: Any, logits: Tensor) -> Tensor:
    """(B,) per image, the smallest log-probability gap between the child taken and the
    runner-up along its hard-inference path: how close float rounding is to another path."""
    top = rules.node_log_probs(logits).topk(2, dim=-1).values  # (B, N, 2); every node has 2+
    gaps = top[..., 0] - top[..., 1]
    hard = rules.hard(logits)
    nodes, mask = rules.path_node[hard], rules.path_mask[hard]  # (B, depth)
    along = gaps.gather(1, nodes.clamp(min=0)).masked_fill(~mask, float("inf"))
    return along.min(1).values


# ---------------------------------------------------------------------------- 4. torchrun
def part_torchrun(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(args.device)
    processes = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 1)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(processes), str(Path(__file__).resolve()), "--ddp-worker",
        "--device", device.type, "--arch", args.arch, "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--warmup-steps", str(args.warmup_steps), "--classes", str(args.classes),
        "--seed", str(args.seed), "--amp" if args.amp else "--no-amp",
    ]  # fmt: skip
    log(f"torchrun: {processes} process(es)")
    start = time.perf_counter()
    result = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, timeout=args.torchrun_timeout, check=False
    )
    documents = json_documents(result.stdout)
    if result.returncode != 0 or not documents:
        tail = " | ".join(result.stdout.strip().splitlines()[-3:])
        raise RuntimeError(f"torchrun exited with {result.returncode} ({tail or 'no output'})")
    return {
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "nproc_per_node": processes,
        "wall_s": round(time.perf_counter() - start, 1),
        **documents[-1],
    }


def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun process: nbdt-train's loop on a DistributedDataParallel model, synthetic
    data (``--batch-size`` per process); rank 0 prints one JSON document."""
    runtime = distributed.start_process(args.device)  # joins the group: NCCL on CUDA, else gloo
    try:
        device = runtime.device
        model, tree, _ = network_and_tree(args)
        context = train_loop.StepContext(runtime, args.amp)
        model.to(device, memory_format=context.memory_format)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        optimizer, scheduler = optimizer_for(model)
        criterion = soft_tree_loss(tree).to(device)
        config = datasets.data_config(model, (args.image_size, args.image_size))
        transform = datasets.BatchTransform(config).to(device)
        generator = torch.Generator().manual_seed(args.seed + runtime.rank)
        images = synthetic_images(args.batch_size, args.image_size, generator).to(device)
        targets = torch.randint(0, args.classes, (args.batch_size,), generator=generator)
        batches = [(images, targets.to(device))]
        stats = {}
        for steps in (args.warmup_steps, args.steps):  # the second call is timed
            stats = train_loop.train_one_epoch(
                ddp, batches * steps, criterion, optimizer, scheduler, transform, context
            )
        if runtime.main:
            emit(
                {
                    "world_size": runtime.world,
                    "device": str(device.type),
                    "batch_per_process": args.batch_size,
                    "global_batch": args.batch_size * runtime.world,
                    "steps": args.steps,
                    "warmup_steps": args.warmup_steps,
                    "images_per_s": round(stats["train_images_per_s"], 1),
                    "images_per_s_per_process": round(
                        stats["train_images_per_s"] / runtime.world, 1
                    ),
                    "loss_finite": math.isfinite(stats["train_loss"]),
                }
            )
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


def json_documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents printed one after another in ``text`` (other lines skipped)."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while True:
        position = text.find("{", position)
        if position < 0:
            return documents
        try:
            document, position = decoder.raw_decode(text, position)
            documents.append(document)
        except json.JSONDecodeError:
            position += 1


# ---------------------------------------------------------------------------------- main
PART_FUNCTIONS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]]] = {
    "throughput": part_throughput,
    "loader": part_loader,
    "passes": part_passes,
    "torchrun": part_torchrun,
}


def run_part(name: str, args: argparse.Namespace, state: dict[str, Any]) -> bool:
    """Run one part and print its document; a failure prints ``error`` instead. True if ok."""
    function = part_environment if name == "environment" else PART_FUNCTIONS[name]
    log(f"part {name}")
    start = time.perf_counter()
    try:
        document = {"part": name, **function(args, state)}
    except Exception as e:  # one failing part must not stop the others
        log(traceback.format_exc())
        document = {"part": name, "error": one_line(e)}
    document["seconds"] = round(time.perf_counter() - start, 1)
    emit(document)
    free_memory(torch.device(args.device))
    return "error" not in document


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--arch", default="resnet101")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-batch", type=int, default=1024, help="cap of the largest-batch search")
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop and round")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three loops; best counts")
    p.add_argument("--classes", type=int, default=1000, help="classes of the network's head")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="also measure torch.compile (default: on CUDA only)",
    )  # fmt: skip
    p.add_argument("--images", type=int, default=2000, help="JPEGs of the loader part")
    p.add_argument("--image-classes", type=int, default=10)
    p.add_argument("--min-side", type=int, default=256)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--workers", default="0,4,8,16", help="loader worker counts, comma-separated")
    p.add_argument("--eval-images", type=int, default=256, help="images of evaluate/examples")
    p.add_argument("--explain-batch", type=int, default=64)
    p.add_argument("--nproc", type=int, default=None, help="torchrun processes (default: GPUs)")
    p.add_argument("--torchrun-timeout", type=int, default=600)
    p.add_argument("--parts", default=",".join(PARTS), help="numbers or names, comma-separated")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    chosen = []
    for item in str(args.parts).split(","):
        item = item.strip()
        name = PARTS[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(PARTS) else item
        if name not in PARTS:
            p.error(f"--parts: unknown part {item!r}; choose from 1-4 or {', '.join(PARTS)}")
        chosen.append(name)
    args.parts = chosen
    for name in ("batch_size", "steps", "warmup_steps", "rounds", "classes", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.workers or min(args.workers) < 0:
        p.error("--workers: counts >= 0, e.g. 0,4,8,16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    temporary = args.out is None
    args.out = tempfile.mkdtemp(prefix="nbdt-gpu-check-") if temporary else args.out
    Path(args.out).mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    try:
        ok = [run_part(name, args, state) for name in ["environment", *args.parts]]
    finally:
        if temporary:
            shutil.rmtree(args.out, ignore_errors=True)
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
