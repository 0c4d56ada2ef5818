"""Streaming metrics of an NBDT's predictions, one accumulator each, registered in
:data:`METRICS`; :class:`TreeMetrics` runs them all (``eval.json``, docs/metrics.md), or only
the per-epoch ones (the trainer's validation).

A new metric is one :class:`~nbdt.evaluation.accumulator.Accumulator` subclass added to
:data:`METRICS`: it then shows in ``eval.json``, in ``metrics.jsonl`` when it is ``per_epoch``,
and in the report's summary table through its ``columns``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nbdt.evaluation.accumulator import (
    TOP_K,
    VARIANTS,
    Accumulator,
    Batch,
    Setting,
    percent,
    sum_over_processes,
)
from nbdt.evaluation.hierarchical import Distances, NodeDecisions, PathEntropy
from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules

TOP1_KEYS = {"network": "top1", "nbdt_soft": "nbdt_soft_top1", "nbdt_hard": "nbdt_hard_top1"}


ECE_BINS = 15


AGREEMENTS = ("network_soft", "network_hard", "soft_hard")


# ------------------------------------------------------------------------------ accumulators
class Counts(Accumulator):
    """What was evaluated: images in all and per class, the classes, the node score, k of the
    top-k and the rulers' trees."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"class_images": (self.setting.hierarchy.num_classes,)}

    def update(self, batch: Batch) -> None:
        self._add("class_images", batch.targets)

    def compute(self) -> dict[str, Any]:
        per_class = [int(n) for n in self._numbers("class_images")]
        setting = self.setting
        trees = [setting.hierarchy] + ([setting.reference] if setting.reference else [])
        return {
            "images": sum(per_class),
            "classes": list(setting.hierarchy.classes),
            "class_images": per_class,
            "node_score": setting.rules.node_score,
            "top_k": setting.top_k,
            "rulers": {ruler: _ruler(t) for ruler, t in zip(setting.rulers, trees, strict=True)},
        }


def _ruler(hierarchy: Hierarchy) -> dict[str, Any]:
    return {
        "root": hierarchy.root.label,
        "inner_nodes": len(hierarchy.inner_nodes),
        "max_depth": hierarchy.max_depth,
    }


class Top1(Accumulator):
    """Network, NBDT-soft and NBDT-hard top-1: the one top-1 trio of evaluation, validation,
    interventions and ONNX measurements (:meth:`add` takes predictions made elsewhere)."""

    per_epoch = True

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"images": (1,), "correct": (len(VARIANTS),)}

    def update(self, batch: Batch) -> None:
        self.add(batch.predictions, batch.targets)

    def add(self, predictions: Tensor, targets: Tensor) -> None:
        """Add (V, B) predicted classes of the variants (network, soft, hard) and (B,) targets."""
        predictions = predictions.to(self._state.device)
        self._sums["images"] += len(targets)
        self._sums["correct"] += (predictions == targets.to(predictions.device)).sum(1)

    def compute(self) -> dict[str, Any]:
        count = self._numbers("images")[0]
        correct = self._numbers("correct")
        return {
            "variants": {
                name: {"top1": percent(n, count)} for name, n in zip(VARIANTS, correct, strict=True)
            }
        }

    def scalars(self) -> dict[str, float | None]:
        variants = self.compute()["variants"]
        return {TOP1_KEYS[name]: v["top1"] for name, v in variants.items()}

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"top-1 %": {name: v["top1"] for name, v in metrics["variants"].items()}}


class TopK(Accumulator):
    """Share of images whose label is among each variant's k first-ranked classes."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"images": (1,), "hits": (len(VARIANTS),)}

    def update(self, batch: Batch) -> None:
        self._sums["images"] += len(batch.targets)
        self._sums["hits"] += batch.hits.any(-1).sum(1)

    def compute(self) -> dict[str, Any]:
        count, hits = self._numbers("images")[0], self._numbers("hits")
        key = f"top{max(TOP_K)}"
        return {
            "variants": {
                name: {key: percent(n, count)} for name, n in zip(VARIANTS, hits, strict=True)
            }
        }

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        key = f"top{max(TOP_K)}"
        heading = f"top-{metrics['top_k']} %"
        return {heading: {name: v[key] for name, v in metrics["variants"].items()}}


class PerClass(Accumulator):
    """Each variant's mistakes, and its top-1 over the images of each class."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.setting.hierarchy.num_classes
        return {"images": (c,), "correct": (len(VARIANTS), c)}

    def update(self, batch: Batch) -> None:
        targets, c = batch.targets, self.setting.hierarchy.num_classes
        variant = torch.arange(len(VARIANTS), device=targets.device)[:, None]
        self._add("images", targets)
        self._add("correct", variant * c + targets, batch.correct)

    def compute(self) -> dict[str, Any]:
        images, correct = self._numbers("images"), self._numbers("correct")
        return {
            "variants": {
                name: {
                    "mistakes": int(sum(images) - sum(right)),
                    "per_class_top1": [percent(r, n) for r, n in zip(right, images, strict=True)],
                }
                for name, right in zip(VARIANTS, correct, strict=True)
            }
        }


class Calibration(Accumulator):
    """Expected calibration error and reliability table of the network's softmax and of
    NBDT-soft, over ECE_BINS equal-width confidence bins."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"bins": (2, ECE_BINS, 3)}  # variant, bin, (count, confidence, correct)

    def update(self, batch: Batch) -> None:
        confidence = torch.stack(
            [batch.network_log_probs.max(1).values, batch.soft.max(1).values]
        ).exp()  # (2, B)
        bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
        rows = torch.arange(2, device=bins.device)[:, None] * ECE_BINS + bins
        values = torch.stack(
            [torch.ones_like(confidence), confidence, batch.correct[:2].to(confidence.dtype)], -1
        )
        self._sums["bins"].view(-1, 3).index_add_(
            0, rows.reshape(-1), values.reshape(-1, 3).to(self._state.dtype)
        )

    def compute(self) -> dict[str, Any]:
        return {
            "variants": {
                name: {"calibration": _calibration(bins)}
                for name, bins in zip(VARIANTS[:2], self._numbers("bins"), strict=True)
            }
        }

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "ECE %": {
                name: v["calibration"]["ece"] if "calibration" in v else None
                for name, v in metrics["variants"].items()
            }
        }


def _calibration(bins: Sequence[Sequence[float]]) -> dict[str, Any]:
    """ECE (percent) and the reliability table from per-bin (count, confidence, correct) sums."""
    total = sum(b[0] for b in bins)
    table = []
    ece = 0.0
    for i, (count, confidence, correct) in enumerate(bins):
        table.append(
            {
                "lower": i / ECE_BINS,
                "upper": (i + 1) / ECE_BINS,
                "count": int(count),
                "confidence": percent(confidence, count),
                "accuracy": percent(correct, count),
            }
        )
        if count:
            ece += abs(correct - confidence) / total
    return {"ece": 100.0 * ece if total else None, "bins": table}


class Agreement(Accumulator):
    """How often two variants' first-ranked classes are the same."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"images": (1,), "agree": (len(AGREEMENTS),)}

    def update(self, batch: Batch) -> None:
        net, soft, hard = batch.predictions
        self._sums["images"] += len(batch.targets)
        self._sums["agree"] += torch.stack([net == soft, net == hard, soft == hard]).sum(1)

    def compute(self) -> dict[str, Any]:
        count, agree = self._numbers("images")[0], self._numbers("agree")
        return {
            "agreement": {
                name: percent(n, count) for name, n in zip(AGREEMENTS, agree, strict=True)
            }
        }


# --------------------------------------------------------------------------- the one table
METRICS: tuple[type[Accumulator], ...] = (
    Counts,
    Top1,
    TopK,
    PerClass,
    Distances,
    Calibration,
    PathEntropy,
    Agreement,
    NodeDecisions,
)
"""Every metric, in ``eval.json``'s key order: a new metric is one more entry here."""


def summary_columns(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's summary-table columns read from ``metrics`` (``eval.json``): every
    registered metric's, in table order; heading -> {variant: cell}."""
    columns: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        columns.update(metric.columns(metrics))
    return columns


# ------------------------------------------------------------------------------- composite
class TreeMetrics:
    """Streaming hierarchy-aware metrics of a network's logits read through a tree: every
    accumulator of :data:`METRICS` over one shared :class:`Setting`.

    ``update(logits, targets)`` adds a batch: (B, C) network logits and (B,) class indices.
    ``compute()`` returns the metrics as plain data (the ``eval.json`` keys of docs/metrics.md).
    Memory: O(C^2) for the LCA tables plus O(N K^2) for the nodes' confusion matrices.
    ``reference`` is a second hierarchy over the same classes (for instance WordNet's) that
    distances are also measured against. ``per_epoch=True`` runs only the metrics flagged for
    the trainer's per-epoch validation; ``rules`` reuses decision rules (on the device) the
    caller has, instead of building them from ``hierarchy`` and ``node_score``.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        reference: Hierarchy | None = None,
        node_score: str = "mean",
        device: str | torch.device = "cpu",
        *,
        per_epoch: bool = False,
        rules: DecisionRules | None = None,
    ):
        if rules is None:
            rules = DecisionRules(hierarchy, node_score=node_score).to(device)
        self.setting = Setting(rules, reference)
        self.accumulators = [m(self.setting) for m in METRICS if m.per_epoch or not per_epoch]

    @classmethod
    def for_epochs(cls, rules: DecisionRules) -> TreeMetrics:
        """The per-epoch metrics of a validation pass with these decision rules (on its device)."""
        return cls(rules.hierarchy, per_epoch=True, rules=rules)

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch of (B, C) network logits and (B,) target class indices."""
        if not isinstance(targets, Tensor) or targets.shape != logits.shape[:1]:
            raise ValueError(
                f"targets must be a tensor of shape ({logits.shape[0]},) to match the logits"
            )
        logits = self.setting.rules._check_logits(logits.detach())
        targets = targets.to(logits.device, torch.long)
        if not len(targets):
            return
        batch = Batch(self.setting, logits, targets)
        for accumulator in self.accumulators:
            accumulator.update(batch)

    def merge(self, other: TreeMetrics) -> TreeMetrics:
        """Add another TreeMetrics' sums (same hierarchy and settings) into this one."""
        if len(other.accumulators) != len(self.accumulators):
            raise ValueError("merge: the accumulators were built for different hierarchies")
        for mine, theirs in zip(self.accumulators, other.accumulators, strict=True):
            mine.check_mergeable(theirs)
        for mine, theirs in zip(self.accumulators, other.accumulators, strict=True):
            mine.merge(theirs)
        return self

    def all_reduce(self, reduce: Callable[[Tensor], Any] | None = None) -> TreeMetrics:
        """Sum over processes in one collective (``reduce``: see ``Sums.all_reduce``)."""
        states = [accumulator._state for accumulator in self.accumulators]
        flat = torch.cat(states)
        (reduce or sum_over_processes)(flat)
        for state, summed in zip(states, flat.split([len(s) for s in states]), strict=True):
            state.copy_(summed)
        return self

    def compute(self) -> dict[str, Any]:
        """The metrics as plain JSON data; shares are percentages, undefined values None."""
        out: dict[str, Any] = {}
        for accumulator in self.accumulators:
            _merge_into(out, accumulator.compute())
        return out

    def scalars(self) -> dict[str, float | None]:
        """The flat numbers of every accumulator (a per-epoch row's columns)."""
        return {k: v for accumulator in self.accumulators for k, v in accumulator.scalars().items()}


def _merge_into(out: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Merge one metric's nested dict into the result; two metrics writing one key is a bug."""
    for key, value in part.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            _merge_into(out[key], value)
        elif key in out:
            raise ValueError(f"two metrics write the eval.json key {key!r}")
        else:
            out[key] = value
