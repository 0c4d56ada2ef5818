"""Metrics that read the tree: how far mistakes land (mistake severity, hierarchical distance
on each ruler), how sure a prediction's path is (path entropy), and each inner node's own
decisions (accuracy, reach, confusion). Definitions: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nbdt.evaluation.accumulator import (
    TOP_K,
    VARIANTS,
    Accumulator,
    Batch,
    percent,
    ratio,
)


class Distances(Accumulator):
    """Mistake severity and hierarchical distance @1 and @k on every ruler (Bertinetto et al.)."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        v, r = len(VARIANTS), len(self.setting.rulers)
        return {
            "images": (1,),
            "severity": (v, r, int(self.setting.lca_height.max()) + 1),
            "distance": (v, r, len(TOP_K)),
        }

    def update(self, batch: Batch) -> None:
        lca_height, c = self.setting.lca_height, self.setting.hierarchy.num_classes
        # LCA heights of each of the top-k classes with the target, on every ruler: (R, V, B, k)
        distance = lca_height.flatten(1)[:, batch.ranked * c + batch.targets[None, :, None]]
        self._sums["images"] += len(batch.targets)
        self._sums["distance"][..., 0] += distance[..., 0].sum(-1).t()
        self._sums["distance"][..., 1] += distance.to(self._state.dtype).mean(-1).sum(-1).t()
        r, h = lca_height.shape[0], self._sums["severity"].shape[-1]
        variant = torch.arange(len(VARIANTS), device=distance.device)[:, None]
        ruler = torch.arange(r, device=distance.device)[:, None, None]
        cell = (variant[None] * r + ruler) * h + distance[..., 0]
        self._add("severity", cell, (~batch.hits[:, :, 0]).expand(r, -1, -1))

    def compute(self) -> dict[str, Any]:
        count = self._numbers("images")[0]
        severity, distance = self._numbers("severity"), self._numbers("distance")
        setting = self.setting
        variants = {}
        for v, name in enumerate(VARIANTS):
            rulers = {}
            for r, ruler in enumerate(setting.rulers):
                histogram = severity[v][r]
                rulers[ruler] = {
                    "mistake_severity": ratio(
                        sum(h * n for h, n in enumerate(histogram)), sum(histogram)
                    ),
                    "hdist@1": ratio(distance[v][r][0], count),
                    f"hdist@{max(TOP_K)}": ratio(distance[v][r][1], count),
                    "severity_histogram": [int(n) for n in histogram],
                }
            variants[name] = {"hierarchy": rulers}
        return {"variants": variants}

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        k, out = metrics["top_k"], {}
        for ruler in metrics["rulers"]:
            for heading, key in (
                (f"severity ({ruler})", "mistake_severity"),
                (f"hdist@1 ({ruler})", "hdist@1"),
                (f"hdist@{k} ({ruler})", f"hdist@{max(TOP_K)}"),
            ):
                out[heading] = {
                    name: v["hierarchy"][ruler][key] for name, v in metrics["variants"].items()
                }
        return out


class PathEntropy(Accumulator):
    """Mean path entropy (nats) of NBDT-soft's and NBDT-hard's right and wrong predictions."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"entropy": (2, 2, 2)}  # variant (soft, hard), wrong, (count, entropy)

    def update(self, batch: Batch) -> None:
        rules, log_probs = self.setting.rules, batch.node_log_probs
        entropy = -torch.where(log_probs > float("-inf"), log_probs.exp() * log_probs, 0.0).sum(
            -1
        )  # (B, N)
        predicted = batch.predictions[1:]  # soft, hard
        nodes, mask = rules.path_node[predicted], rules.path_mask[predicted]  # (2, B, D)
        path_entropy = (entropy[None].expand(2, -1, -1).gather(2, nodes) * mask).sum(-1)
        rows = torch.arange(2, device=nodes.device)[:, None] * 2 + ~batch.correct[1:]
        values = torch.stack([torch.ones_like(path_entropy), path_entropy], -1)
        self._sums["entropy"].view(-1, 2).index_add_(
            0, rows.reshape(-1), values.reshape(-1, 2).to(self._state.dtype)
        )

    def compute(self) -> dict[str, Any]:
        variants = {}
        for (right, wrong), name in zip(self._numbers("entropy"), VARIANTS[1:], strict=True):
            variants[name] = {
                "path_entropy": {
                    "right": ratio(right[1], right[0]),
                    "wrong": ratio(wrong[1], wrong[0]),
                }
            }
        return {"variants": variants}

    @classmethod
    def columns(cls, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        cells = {}
        for name, v in metrics["variants"].items():
            entropy = v.get("path_entropy")
            cells[name] = None if entropy is None else [entropy["right"], entropy["wrong"]]
        return {"path entropy right / wrong": cells}


class NodeDecisions(Accumulator):
    """Per inner node: its own accuracy, how often hard inference reaches it and decides right
    there, and its child confusion matrix."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        n, k = self.setting.rules.num_nodes, self.setting.rules.max_children
        return {
            "samples": (n,),
            "correct": (n,),
            "reached": (n,),
            "reached_correct": (n,),
            "confusion": (n, k, k),
        }

    def update(self, batch: Batch) -> None:
        rules, targets, hard = self.setting.rules, batch.targets, batch.hard
        # Per node, over the samples whose label lies under it: the node's own decision.
        t_node, t_slot = rules.path_node[targets], rules.path_slot[targets]  # (B, D)
        t_mask = rules.path_mask[targets]
        chosen = batch.node_log_probs.argmax(-1).gather(1, t_node)  # the child each node prefers
        k = rules.max_children
        self._add("samples", t_node, t_mask)
        self._add("correct", t_node, t_mask & (chosen == t_slot))
        self._add("confusion", (t_node * k + t_slot) * k + chosen, t_mask)
        # ... and among them, those that hard inference brings to the node.
        h_node, h_slot = rules.path_node[hard], rules.path_slot[hard]
        reached = t_mask & rules.path_mask[hard] & (h_node == t_node)
        self._add("reached", t_node, reached)
        self._add("reached_correct", t_node, reached & (h_slot == t_slot))

    def compute(self) -> dict[str, Any]:
        s = {name: self._numbers(name) for name in self._sums}
        h = self.setting.hierarchy
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
                    "samples": int(s["samples"][i]),
                    "correct": int(s["correct"][i]),
                    "accuracy": percent(s["correct"][i], s["samples"][i]),
                    "reached": int(s["reached"][i]),
                    "reached_correct": int(s["reached_correct"][i]),
                    "reached_accuracy": percent(s["reached_correct"][i], s["reached"][i]),
                    "confusion": [
                        [int(n) for n in row[:width]] for row in s["confusion"][i][:width]
                    ],
                }
            )
        return {"nodes": rows}
