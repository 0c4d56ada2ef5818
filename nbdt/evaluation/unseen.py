"""Where images of classes the model never saw go: each held-out class is scored against its
target node, the lowest node of the model's tree whose classes are its WordNet relatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nbdt.classes import is_wordnet_id
from nbdt.evaluation.accumulator import Sums, percent
from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules


class UnseenRouting(Sums):
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
                            "share": percent(reached[row][i], count),
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
                    "nbdt": percent(nbdt, count),
                    "network": percent(network[row], count),
                    "levels": [level for level in levels if level],
                }
            )
        total = sum(images)
        hits = sum(reached[row][int(t)] for row, t in enumerate(self.target_index.tolist()))
        return {
            "classes": rows,
            "overall": {
                "images": int(total),
                "nbdt": percent(hits, total),
                "network": percent(sum(network), total),
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
