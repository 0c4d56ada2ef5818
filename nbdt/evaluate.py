"""Hierarchy-aware evaluation of an NBDT: does the tree mean something, beyond its top-1?

One streaming pass over a dataset fills :class:`TreeMetrics` (top-k of the network, NBDT-soft and
NBDT-hard, their agreement, mistake severity and average hierarchical distance against the
model's tree and a reference hierarchy, per-node accuracy and confusion, calibration, path
entropy) and :class:`UnseenRouting` (where images of classes the model never saw go). Both keep
only sums, updated per batch without loops over samples, nodes or classes, so ranks and shards
merge exactly. docs/metrics.md defines every number and every key of ``eval.json``.
"""

from __future__ import annotations

import math
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
from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules

EVAL_FORMAT = "nbdt-eval"
EVAL_VERSION = 1
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


def _class_keys(hierarchy: Hierarchy) -> list[list[str]]:
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
    if not isinstance(reference, Hierarchy):
        raise TypeError(f"reference must be a Hierarchy, got {type(reference).__name__}")
    for keys in _class_keys(hierarchy):
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
class _Sums:
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

    def merge(self, other: _Sums) -> _Sums:
        """Add another accumulator's sums (same hierarchy and settings) into this one."""
        if type(other) is not type(self) or other._state.shape != self._state.shape:
            raise ValueError("merge: the accumulators were built for different hierarchies")
        self._state += other._state.to(self._state.device)
        return self

    def all_reduce(self) -> _Sums:
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


class TreeMetrics(_Sums):
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
                    "mistake_severity": _ratio(
                        sum(h * n for h, n in enumerate(histogram)), mistakes
                    ),
                    "hdist@1": _ratio(s["distance"][v][r][0], count),
                    f"hdist@{max(TOP_K)}": _ratio(s["distance"][v][r][1], count),
                    "severity_histogram": [int(n) for n in histogram],
                }
            variants[name] = {
                "top1": _percent(correct[0], count),
                f"top{max(TOP_K)}": _percent(correct[1], count),
                "mistakes": int(mistakes),
                "per_class_top1": [
                    _percent(right, n)
                    for right, n in zip(s["class_correct"][v], s["class_count"], strict=True)
                ],
                "hierarchy": rulers,
            }
        for m, name in enumerate(VARIANTS[:2]):
            variants[name]["calibration"] = _calibration(s["calibration"][m])
        for m, name in enumerate(VARIANTS[1:]):
            right, wrong = s["entropy"][m]
            variants[name]["path_entropy"] = {
                "right": _ratio(right[1], right[0]),
                "wrong": _ratio(wrong[1], wrong[0]),
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
                name: _percent(n, count) for name, n in zip(AGREEMENTS, s["agree"], strict=True)
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
                    "accuracy": _percent(s["node_correct"][i], s["node_samples"][i]),
                    "reached": int(s["node_reached"][i]),
                    "reached_correct": int(s["node_reached_correct"][i]),
                    "reached_accuracy": _percent(
                        s["node_reached_correct"][i], s["node_reached"][i]
                    ),
                    "confusion": [
                        [int(n) for n in row[:width]] for row in s["node_confusion"][i][:width]
                    ],
                }
            )
        return rows


class UnseenRouting(_Sums):
    """Where images of held-out classes go in the tree, and how often to their target node.

    ``targets`` holds, for each held-out class, the id of its target node (an inner node of
    ``hierarchy``, see :func:`unseen_target`). ``update(logits, holdout)`` adds a batch of network
    logits and (B,) held-out class indices. An image is routed right when its hard path passes
    through the target node; the network baseline counts an image when its top-1 class (a seen
    class) lies under the target node.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        names: Sequence[str],
        targets: Sequence[UnseenTarget],
        node_score: str = "mean",
        device: str | torch.device = "cpu",
    ):
        device = torch.device(device)
        if len(names) != len(targets):
            raise ValueError(f"{len(names)} held-out classes but {len(targets)} target nodes")
        self.hierarchy = hierarchy
        self.names = tuple(names)
        self.targets = tuple(targets)
        self.rules = DecisionRules(hierarchy, node_score=node_score).to(device)
        inner = {node.id: i for i, node in enumerate(hierarchy.inner_nodes)}
        self.target_index = torch.tensor([inner[t.node_id] for t in targets], device=device)
        under = torch.zeros(len(targets), hierarchy.num_classes, dtype=torch.bool)
        for row, target in enumerate(targets):
            under[row, list(hierarchy.leaf_indices(target.node_id))] = True
        self.under = under.to(device)
        self._allocate(
            {
                "images": (len(targets),),
                "network": (len(targets),),
                "reached": (len(targets), self.rules.num_nodes),
            },
            device,
        )

    @torch.no_grad()
    def update(self, logits: Tensor, holdout: Tensor) -> None:
        """Add (B, C) network logits of held-out images and their (B,) held-out class indices."""
        logits = self.rules._check_logits(logits.detach())
        holdout = holdout.to(logits.device, torch.long)
        if not len(holdout):
            return
        hard = self.rules.hard(logits)
        nodes, mask = self.rules.path_node[hard], self.rules.path_mask[hard]
        self._add("images", holdout)
        self._add("network", holdout, self.under[holdout, logits.argmax(1)])
        self._add("reached", holdout[:, None] * self.rules.num_nodes + nodes, mask)

    def compute(self) -> dict[str, Any]:
        """Per held-out class and pooled over all held-out images (see docs/metrics.md)."""
        images, network, reached = (self._numbers(n) for n in ("images", "network", "reached"))
        h = self.hierarchy
        inner = h.inner_nodes
        rows = []
        for row, (name, target) in enumerate(zip(self.names, self.targets, strict=True)):
            count = images[row]
            levels: list[list[dict[str, Any]]] = [[] for _ in range(h.max_depth)]
            for i, node in enumerate(inner):
                if reached[row][i]:
                    levels[h.depth(node.id)].append(
                        {
                            "id": node.id,
                            "label": node.label,
                            "share": _percent(reached[row][i], count),
                        }
                    )
            for level in levels:
                level.sort(key=lambda entry: -entry["share"])
            nbdt = reached[row][int(self.target_index[row])]
            rows.append(
                {
                    "name": name,
                    "wnid": target.wnid,
                    "images": int(count),
                    "target": {
                        "id": target.node_id,
                        "label": h[target.node_id].label,
                        "relatives": list(target.relatives),
                    },
                    "nbdt": _percent(nbdt, count),
                    "network": _percent(network[row], count),
                    "levels": [level for level in levels if level],
                }
            )
        total = sum(images)
        hits = sum(reached[row][int(t)] for row, t in enumerate(self.target_index.tolist()))
        return {
            "classes": rows,
            "overall": {
                "images": int(total),
                "nbdt": _percent(hits, total),
                "network": _percent(sum(network), total),
            },
        }


# ------------------------------------------------------------------------------ unseen targets
@dataclass(frozen=True)
class UnseenTarget:
    """A held-out class's target node: ``relatives`` are its nearest seen classes in WordNet."""

    wnid: str
    node_id: str
    relatives: tuple[str, ...]


def unseen_target(hierarchy: Hierarchy, wnid: str) -> UnseenTarget:
    """The node of ``hierarchy`` where images of the held-out class ``wnid`` should go.

    The seen classes nearest to it in WordNet are those whose lowest common hypernym with it is
    the deepest (depth: the hypernym's longest distance from WordNet's root; several classes
    when tied); the target is the lowest node of ``hierarchy`` holding them all, or its parent
    when that is a leaf (a single relative). Seen classes without a WordNet id are skipped.
    """
    from nbdt import wordnet

    if not is_wordnet_id(wnid):
        raise ValueError(f"held-out class {wnid!r} has no WordNet id: no target node")
    if any(leaf.wnid == wnid for leaf in hierarchy.leaves):
        raise ValueError(f"held-out class {wnid!r} is one of the model's classes")
    mine = wordnet.ancestors(wnid)
    scores = {}
    for c, leaf in enumerate(hierarchy.leaves):
        if is_wordnet_id(leaf.wnid):
            common = set(mine) & set(wordnet.ancestors(str(leaf.wnid)))
            scores[c] = max((mine[s] for s in common), default=-1)
    if not scores:
        raise ValueError("no class of the hierarchy has a WordNet id: no target node")
    best = max(scores.values())
    relatives = [c for c, score in scores.items() if score == best]
    paths = [hierarchy.path(c) for c in relatives]
    common_prefix = 0
    while all(
        len(p) > common_prefix and p[common_prefix].id == paths[0][common_prefix].id for p in paths
    ):
        common_prefix += 1
    node = paths[0][common_prefix - 1]
    if node.is_leaf:
        node = hierarchy.parent(node.id) or node
    return UnseenTarget(wnid, node.id, tuple(hierarchy.classes[c] for c in relatives))


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
            from nbdt.report import report_html

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
    this process alone, as a trainer's main process does at the end of a run.
    """
    from nbdt.data import BatchTransform
    from nbdt.model import NBDT

    if not isinstance(model, NBDT):
        raise TypeError(f"model must be a nbdt.NBDT, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    hierarchy = model.hierarchy
    device = torch.device(device) if device is not None else _model_device(model)
    ref_hierarchy = _reference(hierarchy, reference)
    lookup, names, wnids = _class_lookup(hierarchy, data, holdout)
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
    autocast = _autocast(device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, targets in loader:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                inputs = transform(images) if images.dtype == torch.uint8 else images.float()
                if device.type == "cuda":
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast:
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


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA, as the trainer evaluates; nothing elsewhere."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _reference(
    hierarchy: Hierarchy, reference: Hierarchy | str | os.PathLike[str] | None
) -> Hierarchy | None:
    if reference is None:
        return wordnet_reference(hierarchy)
    if isinstance(reference, Hierarchy):
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
        tree = Hierarchy.load(reference, classes=_class_keys(hierarchy)[0])
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


def _class_lookup(
    hierarchy: Hierarchy, data: Any, holdout: Sequence[str]
) -> tuple[Tensor | None, list[str], list[str]]:
    """Map the dataset's class indices to the model's (held-out class h to -1 - h).

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
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        data = torch.utils.data.Subset(data, range(rank, len(data), world))
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


# ------------------------------------------------------------------------------ small helpers
def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _percent(numerator: float, denominator: float) -> float | None:
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
                "confidence": _percent(confidence, count),
                "accuracy": _percent(correct, count),
            }
        )
        if count:
            ece += abs(correct - confidence) / total
    return {"ece": 100.0 * ece if total else None, "bins": table}
