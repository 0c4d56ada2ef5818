"""The seam every metric plugs into: an :class:`Accumulator` keeps named float64 sums of one
metric, adds a :class:`Batch` to them (vectorised: no loop over samples, nodes or classes) and
turns them into plain data; sums merge and all-reduce exactly, so shards and ranks add up.

A batch's shared readings (soft and hard inference, rankings, ...) are computed once, on the
first accumulator that asks, from the :class:`Setting` all accumulators of a pass share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from nbdt.evaluation.rulers import align_reference, lca_tables
from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules

VARIANTS = ("network", "nbdt_soft", "nbdt_hard")


TOP_K = (1, 5)


# ------------------------------------------------------------------------------------ sums
class Sums:
    """Named float64 sums in one flat tensor, so that merging and all-reducing are one add."""

    def _allocate(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device) -> None:
        sizes = [math.prod(shape) for shape in shapes.values()]
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self._state = torch.zeros(sum(sizes), dtype=dtype, device=device)
        self._sums: dict[str, Tensor] = {}
        offset = 0
        for (name, shape), size in zip(shapes.items(), sizes, strict=True):
            self._sums[name] = self._state[offset : offset + size].view(shape)
            offset += size

    def check_mergeable(self, other: Sums) -> None:
        """A ValueError unless ``other`` keeps the same sums (same hierarchy and settings)."""
        if type(other) is not type(self) or other._state.shape != self._state.shape:
            raise ValueError("merge: the accumulators were built for different hierarchies")

    def merge(self, other: Sums) -> Sums:
        """Add another accumulator's sums (same hierarchy and settings) into this one."""
        self.check_mergeable(other)
        self._state += other._state.to(self._state.device)
        return self

    def all_reduce(self, reduce: Callable[[Tensor], Any] | None = None) -> Sums:
        """Sum over processes with ``reduce`` (in place on a tensor; default: torch.distributed's,
        when it is initialised, else nothing)."""
        (reduce or sum_over_processes)(self._state)
        return self

    def _add(self, name: str, index: Tensor, values: Tensor | float = 1.0) -> None:
        """sums[name].flatten()[index] += values (repeated indices add up)."""
        flat = self._sums[name].view(-1)
        if not isinstance(values, Tensor):
            values = torch.full(index.shape, values, dtype=flat.dtype, device=flat.device)
        flat.index_add_(0, index.reshape(-1), values.reshape(-1).to(flat.dtype))

    def _numbers(self, name: str) -> Any:
        return self._sums[name].cpu().tolist()


def sum_over_processes(tensor: Tensor) -> None:
    """Sum ``tensor`` in place over the processes of torch.distributed, when it is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)


# --------------------------------------------------------------------------- shared inputs
class Setting:
    """What the accumulators of one pass share: the model's tree and decision rules (their
    device is the pass's), the reference tree distances are also measured on, and k of the
    top-k. The LCA tables are built on first use (O(C^2)): metrics without them don't pay."""

    def __init__(self, rules: DecisionRules, reference: Hierarchy | None = None):
        self.rules = rules
        self.hierarchy = rules.hierarchy
        self.reference = reference
        self.device = rules.leaf_order.device
        self.reference_order = (
            None if reference is None else align_reference(self.hierarchy, reference)
        )
        self.rulers = ("model",) if reference is None else ("model", "reference")
        self.top_k = min(max(TOP_K), self.hierarchy.num_classes)

    @cached_property
    def _lca(self) -> tuple[Tensor, Tensor]:
        lca_depth, lca_height = lca_tables(self.hierarchy)
        heights = [lca_height]
        if self.reference is not None:
            order = self.reference_order
            heights.append(lca_tables(self.reference)[1][order][:, order])
        return lca_depth.to(self.device), torch.stack(heights).to(self.device)

    @property
    def lca_depth(self) -> Tensor:
        """(C, C) depth of the LCA of two classes in the model's tree."""
        return self._lca[0]

    @property
    def lca_height(self) -> Tensor:
        """(R, C, C) height of the LCA of two classes on each ruler (model, reference)."""
        return self._lca[1]


class Batch:
    """(B, C) network logits and (B,) target class indices, with what the accumulators read of
    them; each reading is computed once, when an accumulator first asks for it."""

    def __init__(self, setting: Setting, logits: Tensor, targets: Tensor):
        self.setting = setting
        self.logits = logits
        self.targets = targets

    @cached_property
    def network_log_probs(self) -> Tensor:
        """(B, C) the network's log-softmax."""
        return torch.log_softmax(self.logits, dim=1)

    @cached_property
    def soft(self) -> Tensor:
        """(B, C) soft inference's class log-probabilities."""
        return self.setting.rules.soft(self.logits)

    @cached_property
    def hard(self) -> Tensor:
        """(B,) hard inference's classes."""
        return self.setting.rules.hard(self.logits)

    @cached_property
    def node_log_probs(self) -> Tensor:
        """(B, N, K) every inner node's child log-probabilities."""
        return self.setting.rules.node_log_probs(self.logits)

    @cached_property
    def predictions(self) -> Tensor:
        """(V, B) the first-ranked class of each variant: network, NBDT-soft, NBDT-hard."""
        return torch.stack([self.logits.argmax(1), self.soft.argmax(1), self.hard])

    @cached_property
    def correct(self) -> Tensor:
        """(V, B) whether each variant's first-ranked class is the target."""
        return self.predictions == self.targets

    @cached_property
    def ranked(self) -> Tensor:
        """(V, B, k) each variant's k first-ranked classes (k = the setting's ``top_k``).

        Stable sorts, so the first is the argmax of :attr:`predictions`, ties included. Hard
        inference ranks its leaf first, then the classes that leave its path the deepest; soft
        probability breaks the ties (it lies in [0, 1], the depths are integers).
        """
        hard_key = 2.0 * self.setting.lca_depth[self.hard].to(self.soft.dtype) + self.soft.exp()
        k = self.setting.top_k
        return torch.stack(
            [
                key.sort(dim=1, descending=True, stable=True).indices[:, :k]
                for key in (self.logits, self.soft, hard_key)
            ]
        )

    @cached_property
    def hits(self) -> Tensor:
        """(V, B, k) whether each of the k first-ranked classes is the target."""
        return self.ranked == self.targets[None, :, None]


# ---------------------------------------------------------------------------- the seam
class Accumulator(Sums):
    """One metric: sums declared by :meth:`shapes`, a batch added by :meth:`update`, and
    :meth:`compute`'s part of ``eval.json`` (nested dicts, merged with the other metrics').

    Register the class in :data:`nbdt.evaluation.metrics.METRICS`. ``per_epoch = True`` also
    runs it in the trainer's validation every epoch, where :meth:`scalars` become columns of
    ``metrics.jsonl``; :meth:`columns` adds it to the report's summary table.
    """

    per_epoch: ClassVar[bool] = False

    def __init__(self, setting: Setting):
        self.setting = setting
        self.start()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The named sums this metric keeps, and their shapes."""
        raise NotImplementedError

    def start(self) -> None:
        """Start over: every sum zero."""
        self._allocate(self.shapes(), self.setting.device)

    def update(self, batch: Batch) -> None:
        """Add a batch to the sums."""
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        """This metric's part of ``eval.json``, as plain JSON data."""
        raise NotImplementedError

    def scalars(self) -> dict[str, float | None]:
        """Flat numbers for a per-epoch row: the numeric leaves of :meth:`compute`, their keys
        joined by ``_``."""
        return dict(_numeric_leaves(self.compute()))

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Columns of the report's summary table read from ``metrics`` (the ``eval.json``
        content): heading -> {variant: cell}."""
        return {}


def _numeric_leaves(data: Mapping[str, Any], prefix: str = "") -> Any:
    for key, value in data.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _numeric_leaves(value, name)
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            yield name, value


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is 0."""
    return numerator / denominator if denominator else None


def percent(numerator: float, denominator: float) -> float | None:
    """100 * numerator / denominator, None when the denominator is 0."""
    return 100.0 * numerator / denominator if denominator else None
