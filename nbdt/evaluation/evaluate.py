"""Hierarchy-aware evaluation of an NBDT: does the tree mean something, beyond its top-1?

One streaming pass over a dataset fills :class:`~nbdt.evaluation.metrics.TreeMetrics` and, for
held-out classes, :class:`~nbdt.evaluation.unseen.UnseenRouting`; the result is written as
``eval.json`` (docs/metrics.md defines every key) and the report page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nbdt._io import write_text
from nbdt.classes import is_wordnet_id
from nbdt.distributed import autocast, shard
from nbdt.evaluation.metrics import TreeMetrics
from nbdt.evaluation.rulers import align_reference, class_keys, wordnet_reference
from nbdt.evaluation.unseen import UnseenRouting, unseen_target
from nbdt.heads import network_device
from nbdt.hierarchy import Hierarchy
from nbdt.progress import Progress
from nbdt.tree import Tree

EVAL_FORMAT = "nbdt-eval"


EVAL_VERSION = 1


# ------------------------------------------------------------------------------------ result
@dataclass
class EvalResult:
    """An evaluation: ``metrics`` is the ``eval.json`` content (docs/metrics.md)."""

    metrics: dict[str, Any]
    hierarchy: Hierarchy
    reference: Hierarchy | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``eval.json`` atomically."""
        return write_eval_json(self.metrics, path)

    def write(
        self,
        folder: str | os.PathLike[str],
        *,
        report: bool = True,
        history: Sequence[Mapping[str, Any]] | None = None,
        title: str | None = None,
    ) -> list[Path]:
        """Write ``report.html`` (with the training curves of ``history``, the rows of a run's
        metrics.jsonl) and ``eval.json`` into ``folder``, each atomically; return their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        if report:
            from nbdt.evaluation.report import report_html

            written.append(report_html(self, folder / "report.html", history=history, title=title))
        written.append(self.save(folder / "eval.json"))
        return written

    def summary(self) -> str:
        """A few lines: top-1, top-k, severity and hdist@1 per variant, each held-out class."""
        metrics = self.metrics

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        lines = [f"{metrics['images']} images, {len(metrics['classes'])} classes"]
        for name, v in metrics["variants"].items():
            ruler = v["hierarchy"]["reference" if "reference" in v["hierarchy"] else "model"]
            lines.append(
                f"  {name:10s} top-1 {fmt(v['top1'])}%  top-{metrics['top_k']} {fmt(v['top5'])}%"
                f"  severity {fmt(ruler['mistake_severity'])}  hdist@1 {fmt(ruler['hdist@1'])}"
            )
        for row in (metrics.get("unseen") or {}).get("classes", []):
            lines.append(
                f"  {row['name']} -> {row['target']['label']}: NBDT {fmt(row['nbdt'])}%,"
                f" network {fmt(row['network'])}%"
            )
        return "\n".join(lines)


def write_eval_json(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write evaluation metrics as JSON (no NaN: undefined values are null), atomically."""
    import json

    return write_text(path, json.dumps(metrics, indent=1, allow_nan=False) + "\n")


# -------------------------------------------------------------------------------- evaluate
def evaluate(
    model: Any,
    data: Any,
    reference: Hierarchy | str | os.PathLike[str] | None = None,
    *,
    holdout: Sequence[str] = (),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    workers: int = 0,
    distributed: bool | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate an NBDT over a dataset or a DataLoader in one streaming pass.

    ``data`` yields (images, targets) like the datasets of :mod:`nbdt.data`: uint8 images are
    preprocessed with the model's data config (:class:`nbdt.data.BatchTransform`), float images
    are taken as the model's input. When the dataset names its classes (``classes``, optionally
    ``wnids``), they must be the model's classes, bar the ``holdout`` ones: classes the model
    never saw, whose images are routed through the tree (:class:`UnseenRouting`) instead.
    ``reference``: a hierarchy, a hierarchy file, ``"wordnet"``, ``"none"``, or None for WordNet
    when every class has a WordNet id. Under torchrun (``distributed``: None, when
    torch.distributed is initialised) a dataset is split over the ranks (a DataLoader is taken
    as already split) and the sums are added up over them; ``distributed=False`` evaluates in
    this process alone, as a trainer's main process does at the end of a run. ``progress``
    shows the pass (a bar on a terminal, log lines elsewhere).
    """
    from nbdt.data import BatchTransform
    from nbdt.model import NBDT

    if not isinstance(model, NBDT):
        raise TypeError(f"model must be a nbdt.NBDT, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    hierarchy = model.hierarchy
    device = torch.device(device) if device is not None else network_device(model)[0]
    ref_hierarchy = _reference(hierarchy, reference)
    lookup, names, wnids = class_lookup(hierarchy, data, holdout)
    metrics = TreeMetrics(hierarchy, ref_hierarchy, model.node_score, device)
    unseen = None
    if holdout:
        targets = [unseen_target(hierarchy, w) for w in wnids]
        unseen = UnseenRouting(hierarchy, names, targets, model.node_score, device)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    loader = _loader(data, batch_size, workers, device, distributed)
    lookup = None if lookup is None else lookup.to(device)
    transform = BatchTransform(model.data_config).to(device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            batches = loader if progress is None else progress.track(loader, len(loader), "eval")
            for images, targets in batches:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                inputs = transform(images) if images.dtype == torch.uint8 else images.float()
                if device.type == "cuda":
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast(device):
                    logits = model.logits(inputs)
                logits = logits.float()
                if lookup is None:
                    metrics.update(logits, targets)
                    continue
                mapped = lookup[targets]
                seen = mapped >= 0
                metrics.update(logits[seen], mapped[seen])
                if unseen is not None:
                    unseen.update(logits[~seen], -1 - mapped[~seen])
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    if distributed:
        metrics.all_reduce()
        if unseen is not None:
            unseen.all_reduce()
    out = metrics.compute()
    total = out["images"] + (0 if unseen is None else sum(unseen._numbers("images")))
    if total == 0:
        raise ValueError("data: no images to evaluate (the dataset is empty)")
    if out["images"] == 0:
        raise ValueError("data: no images of the model's classes to evaluate (only held-out)")
    result = {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        **out,
        "unseen": None if unseen is None else unseen.compute(),
        "images_per_s": total / seconds if seconds > 0 else None,
    }
    return EvalResult(result, hierarchy, ref_hierarchy)


def _reference(
    hierarchy: Hierarchy, reference: Hierarchy | str | os.PathLike[str] | None
) -> Hierarchy | None:
    if reference is None:
        return wordnet_reference(hierarchy)
    if isinstance(reference, Tree):
        align_reference(hierarchy, reference)  # fails early, naming the leaves
        return reference
    if reference == "none":
        return None
    if reference == "wordnet":
        tree = wordnet_reference(hierarchy)
        if tree is None:
            missing = [leaf.label for leaf in hierarchy.leaves if not is_wordnet_id(leaf.wnid)]
            raise ValueError(
                f"reference 'wordnet': classes {missing[:5]} have no WordNet id; pass a"
                " hierarchy file"
            )
        return tree
    if not isinstance(reference, (str, os.PathLike)):
        raise TypeError(
            "reference must be a Hierarchy, a file, 'wordnet', 'none' or None, got"
            f" {type(reference).__name__}"
        )
    try:
        tree = Hierarchy.load(reference, classes=class_keys(hierarchy)[0])
        align_reference(hierarchy, tree)
    except ValueError as e:
        raise ValueError(f"reference {reference}: {e}") from None
    return tree


def _dataset_of(data: Any) -> Any:
    """The dataset under a DataLoader and any Subset wrappers."""
    data = getattr(data, "dataset", data) if isinstance(data, torch.utils.data.DataLoader) else data
    while isinstance(data, torch.utils.data.Subset):
        data = data.dataset
    return data


def class_lookup(
    hierarchy: Hierarchy, data: Any, holdout: Sequence[str]
) -> tuple[Tensor | None, list[str], list[str]]:
    """Map the dataset's class indices to the model's (held-out class h to -1 - h): the one
    rule by which every command matches a dataset to a model (eval, compress).

    Returns the lookup (None when the dataset's classes are the model's, in order), and the
    held-out classes' names and WordNet ids.
    """
    if isinstance(holdout, str):
        holdout = [holdout]
    holdout = [str(name) for name in holdout]
    source = _dataset_of(data)
    classes = getattr(source, "classes", None)
    if classes is None:
        if holdout:
            raise ValueError("holdout needs a dataset that names its classes (.classes)")
        return None, [], []
    classes = [str(c) for c in classes]
    wnids = [str(w) for w in getattr(source, "wnids", [None] * len(classes))]
    unknown = [name for name in holdout if name not in classes]
    if unknown:
        raise ValueError(f"unknown held-out class {unknown[0]!r}: the dataset's are {classes}")
    model_keys = {label: j for j, label in enumerate(hierarchy.classes)}
    model_keys.update(
        (str(leaf.wnid), j) for j, leaf in enumerate(hierarchy.leaves) if leaf.wnid is not None
    )
    lookup: list[int] = []
    seen: set[int] = set()
    for name, wnid in zip(classes, wnids, strict=True):
        if name in holdout:
            if name in model_keys or wnid in model_keys:
                raise ValueError(f"held-out class {name!r} is one of the model's classes")
            lookup.append(-1 - holdout.index(name))
        elif name in model_keys or wnid in model_keys:
            j = model_keys.get(name, model_keys.get(wnid))
            lookup.append(j)
            seen.add(j)
        else:
            raise ValueError(
                f"the dataset's class {name!r} is not one of the model's classes"
                f" {list(hierarchy.classes)[:10]}: evaluate on the model's dataset, or pass"
                " it as a held-out class"
            )
    missing = [hierarchy.classes[j] for j in range(hierarchy.num_classes) if j not in seen]
    if missing:
        raise ValueError(f"the dataset lacks the model's classes {missing[:5]}")
    held = [wnids[classes.index(name)] for name in holdout]
    if lookup == list(range(hierarchy.num_classes)):
        return None, holdout, held
    return torch.tensor(lookup), holdout, held


def _loader(
    data: Any, batch_size: int, workers: int, device: torch.device, distributed: bool
) -> Iterable[Any]:
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"data must be a dataset or a DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data: no images to evaluate (the dataset is empty)")
    if distributed:  # every world-th image, none twice, so the summed counts are exact
        data = shard(data, (torch.distributed.get_rank(), torch.distributed.get_world_size()))
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
