"""Streaming metric sums of an NBDT's predictions: top-k, agreement, mistake severity,
hierarchical distance, per-node accuracy, calibration and path entropy (docs/metrics.md).

Every update is vectorised over the batch (no loops over samples, nodes or classes) and keeps only
sums, so ranks and shards merge exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nbdt.classes import is_wordnet_id
from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules
from nbdt.tree import Tree

VARIANTS = ("network", "nbdt_soft", "nbdt_hard")


TOP_K = (1, 5)


ECE_BINS = 15


AGREEMENTS = ("network_soft", "network_hard", "soft_hard")


# ------------------------------------------------------------------------------- tree tables
def lca_tables(hierarchy: Hierarchy) -> tuple[Tensor, Tensor]:
    """(C, C) depth and height of the lowest common ancestor (LCA) of every pair of classes.

    Depth counts edges from the root (the root has depth 0). The height of a node is the number
    of edges on the longest downward path from it to a leaf of its subtree: a leaf has height
    0, a node whose children are all leaves height 1, and a node above leaves at several depths
    takes the deepest. So the LCA height of a class with itself is 0, and of two classes it does
    not depend on where in the subtree the two classes sit. Built once, O(C^2) memory.
    """
    nodes = hierarchy.nodes
    index = {node.id: i for i, node in enumerate(nodes)}
    height = [0] * len(nodes)
    for i in reversed(range(len(nodes))):  # breadth first: children come after their parent
        children = nodes[i].children
        if children:
            height[i] = 1 + max(height[index[c]] for c in children)
    depth = hierarchy.max_depth
    paths = torch.full((hierarchy.num_classes, depth + 1), -1, dtype=torch.long)
    for c in range(hierarchy.num_classes):
        path = [index[node.id] for node in hierarchy.path(c)]
        paths[c, : len(path)] = torch.tensor(path)
    shared = torch.ones(hierarchy.num_classes, hierarchy.num_classes, dtype=torch.bool)
    lca_depth = torch.full(shared.shape, -1, dtype=torch.long)
    for level in range(depth + 1):  # paths start at the root: the LCA ends the common prefix
        column = paths[:, level]
        shared &= (column[:, None] == column[None, :]) & (column[:, None] >= 0)
        lca_depth += shared
    lca_node = paths.gather(1, lca_depth)
    return lca_depth, torch.tensor(height)[lca_node]


def class_keys(hierarchy: Hierarchy) -> list[list[str]]:
    """Ways to name the classes, in the order to try: WordNet ids (when every class has
    one), leaf ids, labels."""
    leaves = hierarchy.leaves
    keys = [list(hierarchy.class_ids), list(hierarchy.classes)]
    if all(is_wordnet_id(leaf.wnid) for leaf in leaves):
        keys.insert(0, [str(leaf.wnid) for leaf in leaves])
    return keys


def align_reference(hierarchy: Hierarchy, reference: Hierarchy) -> Tensor:
    """(C,) the reference's class index of each of ``hierarchy``'s classes.

    Leaves match by WordNet id when every class has one, else by leaf id, else by label. A
    reference whose leaves are not exactly these classes is a ValueError.
    """
    if not isinstance(reference, Tree):
        raise TypeError(f"reference must be a Hierarchy, got {type(reference).__name__}")
    for keys in class_keys(hierarchy):
        try:
            matched = reference.match_classes(keys)
            break
        except ValueError as e:
            error = e
    else:
        raise ValueError(f"reference hierarchy: {error}: it must have the model's classes")
    extra = sorted(set(reference.class_ids) - set(matched))
    if extra or len(set(matched)) != len(matched):
        shown = [reference[i].label for i in extra[:5]]
        raise ValueError(
            f"reference hierarchy has {reference.num_classes} leaves, the model"
            f" {hierarchy.num_classes} classes (leaves not among them: {shown}): it must have"
            " the model's classes"
        )
    position = {leaf_id: j for j, leaf_id in enumerate(reference.class_ids)}
    return torch.tensor([position[leaf_id] for leaf_id in matched])


def wordnet_reference(hierarchy: Hierarchy) -> Hierarchy | None:
    """The WordNet tree over the hierarchy's classes, or None when a class has no WordNet id."""
    leaves = hierarchy.leaves
    if not all(is_wordnet_id(leaf.wnid) for leaf in leaves):
        return None
    return Hierarchy.wordnet(list(hierarchy.classes), wnids=[str(leaf.wnid) for leaf in leaves])


# ------------------------------------------------------------------------------ accumulators
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

    def merge(self, other: Sums) -> Sums:
        """Add another accumulator's sums (same hierarchy and settings) into this one."""
        if type(other) is not type(self) or other._state.shape != self._state.shape:
            raise ValueError("merge: the accumulators were built for different hierarchies")
        self._state += other._state.to(self._state.device)
        return self

    def all_reduce(self) -> Sums:
        """Sum over the processes of torch.distributed, when it is initialised (else nothing)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._state)
        return self

    def _add(self, name: str, index: Tensor, values: Tensor | float = 1.0) -> None:
        """sums[name].flatten()[index] += values (repeated indices add up)."""
        flat = self._sums[name].view(-1)
        if not isinstance(values, Tensor):
            values = torch.full(index.shape, values, dtype=flat.dtype, device=flat.device)
        flat.index_add_(0, index.reshape(-1), values.reshape(-1).to(flat.dtype))

    def _numbers(self, name: str) -> Any:
        return self._sums[name].cpu().tolist()


class TreeMetrics(Sums):
    """Streaming hierarchy-aware metrics of a network's logits read through a tree.

    ``update(logits, targets)`` adds a batch: (B, C) network logits and (B,) class indices.
    ``compute()`` returns the metrics as plain data (the ``eval.json`` keys of docs/metrics.md).
    Memory: O(C^2) for the LCA tables plus O(N K^2) for the nodes' confusion matrices.
    ``reference`` is a second hierarchy over the same classes (for instance WordNet's) that
    distances are also measured against.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        reference: Hierarchy | None = None,
        node_score: str = "mean",
        device: str | torch.device = "cpu",
    ):
        device = torch.device(device)
        self.hierarchy = hierarchy
        self.reference = reference
        self.rules = DecisionRules(hierarchy, node_score=node_score).to(device)
        lca_depth, lca_height = lca_tables(hierarchy)
        heights = [lca_height]
        if reference is not None:
            order = align_reference(hierarchy, reference)
            heights.append(lca_tables(reference)[1][order][:, order])
        self.rulers = ("model",) if reference is None else ("model", "reference")
        self.lca_depth = lca_depth.to(device)
        self.lca_height = torch.stack(heights).to(device)  # (R, C, C)
        self.top_k = min(max(TOP_K), hierarchy.num_classes)
        c, n, k = hierarchy.num_classes, self.rules.num_nodes, self.rules.max_children
        v, r = len(VARIANTS), len(self.rulers)
        self._allocate(
            {
                "images": (1,),
                "top_correct": (v, len(TOP_K)),
                "agree": (len(AGREEMENTS),),
                "class_count": (c,),
                "class_correct": (v, c),
                "severity": (v, r, int(self.lca_height.max()) + 1),
                "distance": (v, r, len(TOP_K)),
                "calibration": (2, ECE_BINS, 3),
                "entropy": (2, 2, 2),
                "node_samples": (n,),
                "node_correct": (n,),
                "node_reached": (n,),
                "node_reached_correct": (n,),
                "node_confusion": (n, k, k),
            },
            device,
        )

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch of (B, C) network logits and (B,) target class indices."""
        rules = self.rules
        if not isinstance(targets, Tensor) or targets.shape != logits.shape[:1]:
            raise ValueError(
                f"targets must be a tensor of shape ({logits.shape[0]},) to match the logits"
            )
        logits = rules._check_logits(logits.detach())
        targets = targets.to(logits.device, torch.long)
        if not len(targets):
            return
        c = rules.num_classes
        net = torch.log_softmax(logits, dim=1)
        soft = rules.soft(logits)
        node_log_probs = rules.node_log_probs(logits)
        hard = rules.hard(logits)
        # Hard inference ranks its leaf first, then the classes that leave its path the
        # deepest; soft probability breaks the ties (it lies in [0, 1], the depths are integers).
        hard_key = 2.0 * self.lca_depth[hard].to(soft.dtype) + soft.exp()
        tops = torch.stack(
            [t.topk(self.top_k, dim=1).indices for t in (logits, soft, hard_key)]
        )  # (V, B, k)
        hit = tops == targets[None, :, None]
        first = tops[:, :, 0]
        self._sums["images"] += len(targets)
        self._sums["top_correct"][:, 0] += hit[:, :, 0].sum(1)
        self._sums["top_correct"][:, 1] += hit.any(-1).sum(1)
        self._sums["agree"] += torch.stack(
            [first[0] == first[1], first[0] == first[2], first[1] == first[2]]
        ).sum(1)
        self._add("class_count", targets)
        variant = torch.arange(len(VARIANTS), device=logits.device)[:, None]
        self._add("class_correct", variant * c + targets, hit[:, :, 0])

        # LCA heights of each of the top-k classes with the target, on every ruler: (R, V, B, k)
        distance = self.lca_height.flatten(1)[:, tops * c + targets[None, :, None]]
        self._sums["distance"][..., 0] += distance[..., 0].sum(-1).t()
        self._sums["distance"][..., 1] += distance.to(self._state.dtype).mean(-1).sum(-1).t()
        r, h = self.lca_height.shape[0], self._sums["severity"].shape[-1]
        ruler = torch.arange(r, device=logits.device)[:, None, None]
        cell = (variant[None] * r + ruler) * h + distance[..., 0]
        self._add("severity", cell, (~hit[:, :, 0]).expand(r, -1, -1))

        # Calibration of the network's softmax and of NBDT-soft: count, confidence, correct.
        confidence = torch.stack([net.max(1).values, soft.max(1).values]).exp()  # (2, B)
        bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
        rows = torch.arange(2, device=logits.device)[:, None] * ECE_BINS + bins
        values = torch.stack(
            [torch.ones_like(confidence), confidence, hit[:2, :, 0].to(confidence.dtype)], -1
        )
        self._sums["calibration"].view(-1, 3).index_add_(
            0, rows.reshape(-1), values.reshape(-1, 3).to(self._state.dtype)
        )

        # Path entropy (nats, summed over the decisions on the predicted class's path).
        entropy = -torch.where(
            node_log_probs > float("-inf"), node_log_probs.exp() * node_log_probs, 0.0
        ).sum(-1)  # (B, N)
        predicted = first[1:]  # soft, hard
        nodes, mask = rules.path_node[predicted], rules.path_mask[predicted]  # (2, B, D)
        path_entropy = (entropy[None].expand(2, -1, -1).gather(2, nodes) * mask).sum(-1)
        wrong = ~hit[1:, :, 0]
        rows = torch.arange(2, device=logits.device)[:, None] * 2 + wrong
        values = torch.stack([torch.ones_like(path_entropy), path_entropy], -1)
        self._sums["entropy"].view(-1, 2).index_add_(
            0, rows.reshape(-1), values.reshape(-1, 2).to(self._state.dtype)
        )

        # Per node, over the samples whose label lies under it: the node's own decision.
        t_node, t_slot = rules.path_node[targets], rules.path_slot[targets]  # (B, D)
        t_mask = rules.path_mask[targets]
        chosen = node_log_probs.argmax(-1).gather(1, t_node)  # the child each node prefers
        k = rules.max_children
        self._add("node_samples", t_node, t_mask)
        self._add("node_correct", t_node, t_mask & (chosen == t_slot))
        self._add("node_confusion", (t_node * k + t_slot) * k + chosen, t_mask)
        # ... and among them, those that hard inference brings to the node.
        h_node, h_slot = rules.path_node[hard], rules.path_slot[hard]
        reached = t_mask & rules.path_mask[hard] & (h_node == t_node)
        self._add("node_reached", t_node, reached)
        self._add("node_reached_correct", t_node, reached & (h_slot == t_slot))

    def compute(self) -> dict[str, Any]:
        """The metrics as plain JSON data; shares are percentages, undefined values None."""
        s = {name: self._numbers(name) for name in self._sums}
        count = s["images"][0]
        variants: dict[str, Any] = {}
        for v, name in enumerate(VARIANTS):
            correct = s["top_correct"][v]
            mistakes = count - correct[0]
            rulers = {}
            for r, ruler in enumerate(self.rulers):
                histogram = s["severity"][v][r]
                rulers[ruler] = {
                    "mistake_severity": ratio(
                        sum(h * n for h, n in enumerate(histogram)), mistakes
                    ),
                    "hdist@1": ratio(s["distance"][v][r][0], count),
                    f"hdist@{max(TOP_K)}": ratio(s["distance"][v][r][1], count),
                    "severity_histogram": [int(n) for n in histogram],
                }
            variants[name] = {
                "top1": percent(correct[0], count),
                f"top{max(TOP_K)}": percent(correct[1], count),
                "mistakes": int(mistakes),
                "per_class_top1": [
                    percent(right, n)
                    for right, n in zip(s["class_correct"][v], s["class_count"], strict=True)
                ],
                "hierarchy": rulers,
            }
        for m, name in enumerate(VARIANTS[:2]):
            variants[name]["calibration"] = _calibration(s["calibration"][m])
        for m, name in enumerate(VARIANTS[1:]):
            right, wrong = s["entropy"][m]
            variants[name]["path_entropy"] = {
                "right": ratio(right[1], right[0]),
                "wrong": ratio(wrong[1], wrong[0]),
            }
        return {
            "images": int(count),
            "classes": list(self.hierarchy.classes),
            "class_images": [int(n) for n in s["class_count"]],
            "node_score": self.rules.node_score,
            "top_k": self.top_k,
            "rulers": {
                "model": _ruler(self.hierarchy),
                **({"reference": _ruler(self.reference)} if self.reference is not None else {}),
            },
            "variants": variants,
            "agreement": {
                name: percent(n, count) for name, n in zip(AGREEMENTS, s["agree"], strict=True)
            },
            "nodes": self._nodes(s),
        }

    def _nodes(self, s: Mapping[str, Any]) -> list[dict[str, Any]]:
        h = self.hierarchy
        rows = []
        for i, node in enumerate(h.inner_nodes):
            width = len(node.children)
            rows.append(
                {
                    "id": node.id,
                    "label": node.label,
                    "wnid": node.wnid,
                    "depth": h.depth(node.id),
                    "children": [{"id": c, "label": h[c].label} for c in node.children],
                    "samples": int(s["node_samples"][i]),
                    "correct": int(s["node_correct"][i]),
                    "accuracy": percent(s["node_correct"][i], s["node_samples"][i]),
                    "reached": int(s["node_reached"][i]),
                    "reached_correct": int(s["node_reached_correct"][i]),
                    "reached_accuracy": percent(s["node_reached_correct"][i], s["node_reached"][i]),
                    "confusion": [
                        [int(n) for n in row[:width]] for row in s["node_confusion"][i][:width]
                    ],
                }
            )
        return rows


# ------------------------------------------------------------------------------ small helpers
def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def percent(numerator: float, denominator: float) -> float | None:
    return 100.0 * numerator / denominator if denominator else None


def _ruler(hierarchy: Hierarchy) -> dict[str, Any]:
    return {
        "root": hierarchy.root.label,
        "inner_nodes": len(hierarchy.inner_nodes),
        "max_depth": hierarchy.max_depth,
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
