"""Loop-per-node reference for the decision rules and losses, and random trees to test them on.

Written for obviousness, not speed: every inner node and every path is visited in Python (the
batch is the only vectorised axis, as in the original NBDT code), so the vectorised
``nbdt.rules`` / ``nbdt.loss`` can be checked against it, and ``scripts/bench_rules.py`` times it.
"""

from __future__ import annotations

import random
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from nbdt.hierarchy import Hierarchy, Node


def random_tree(
    num_classes: int, seed: int = 0, branching: tuple[int, int] = (2, 7), chain: bool = False
) -> Hierarchy:
    """A random tree over classes ``c0..c{n-1}``: merges random groups of 2..7 subtrees.

    ``chain=True`` always merges the newest subtree again, giving a deep, unbalanced tree.
    Class order is shuffled against the tree, so depth-first order differs from class order.
    """
    rng = random.Random(seed)
    classes = [f"c{j}" for j in range(num_classes)]
    nodes = [Node(c, f"class {c}") for c in classes]
    pending = classes[:]
    rng.shuffle(pending)
    while len(pending) > 1:
        size = min(rng.randint(*branching), len(pending))
        if chain:
            group, pending = pending[-size:], pending[:-size]
        else:
            picks = set(rng.sample(range(len(pending)), size))
            group = [p for i, p in enumerate(pending) if i in picks]
            pending = [p for i, p in enumerate(pending) if i not in picks]
        node = Node(f"n{len(nodes)}", f"inner {len(nodes)}", None, tuple(group))
        nodes.append(node)
        pending.append(node.id)
    return Hierarchy(nodes, classes)


def child_scores(h: Hierarchy, logits: Tensor, node: Node, node_score: str) -> Tensor:
    """(B, children) scores of one node's children."""
    columns = []
    for child in node.children:
        leaves = logits[:, list(h.leaf_indices(child))]
        columns.append(leaves.mean(1) if node_score == "mean" else leaves.logsumexp(1))
    return torch.stack(columns, 1)


def node_log_probs(h: Hierarchy, logits: Tensor, node_score: str = "mean") -> Tensor:
    """(B, N, K) child log-probabilities per inner node, -inf padded."""
    width = max(len(n.children) for n in h.inner_nodes)
    out = logits.new_full((logits.shape[0], len(h.inner_nodes), width), float("-inf"))
    for i, node in enumerate(h.inner_nodes):
        scores = child_scores(h, logits, node, node_score)
        out[:, i, : len(node.children)] = torch.log_softmax(scores, 1)
    return out


def soft(h: Hierarchy, logits: Tensor, node_score: str = "mean") -> Tensor:
    """(B, C) class log-probabilities: per class, the sum of branch log-probs along its path."""
    index = {n.id: i for i, n in enumerate(h.inner_nodes)}
    per_node = node_log_probs(h, logits, node_score)
    columns = []
    for c in range(h.num_classes):
        path = h.path(c)
        total = logits.new_zeros(logits.shape[0])
        for parent, child in pairwise(path):
            total = total + per_node[:, index[parent.id], parent.children.index(child.id)]
        columns.append(total)
    return torch.stack(columns, 1)


def hard(h: Hierarchy, logits: Tensor, node_score: str = "mean") -> Tensor:
    """(B,) greedy descent, sample by sample: at each node take the highest-scoring child."""
    out = []
    for row in logits:
        node = h.root
        while not node.is_leaf:
            scores = child_scores(h, row[None], node, node_score)[0]
            node = h[node.children[int(scores.argmax())]]
        out.append(h.class_ids.index(node.id))
    return torch.tensor(out)


def path_losses(h: Hierarchy, logits: Tensor, target: Tensor, node_score: str = "mean"):
    """Per sample: (sum, count) of the children-CE at every inner node on the label's path.

    Node by node, as the reference HardTreeSupLoss did: the samples whose label lies under the
    node get the cross-entropy of the node's child scores against the child holding their label.
    """
    total = logits.new_zeros(logits.shape[0])
    count = torch.zeros(logits.shape[0], dtype=torch.long)
    for node in h.inner_nodes:
        child_of = {j: k for k, c in enumerate(node.children) for j in h.leaf_indices(c)}
        rows = [b for b, y in enumerate(target.tolist()) if y in child_of]
        if not rows:
            continue
        scores = child_scores(h, logits[rows], node, node_score)
        wanted = torch.tensor([child_of[int(target[b])] for b in rows])
        ce = F.cross_entropy(scores, wanted, reduction="none")
        total = total.index_add(0, torch.tensor(rows), ce)
        count[rows] += 1
    return total, count


def soft_loss(
    h: Hierarchy, logits: Tensor, target: Tensor, variant: str = "nll", node_score: str = "mean"
) -> Tensor:
    """(B,) soft tree term: the label's NLL under soft inference, or the reference's CE on probs."""
    if variant == "nll":
        return path_losses(h, logits, target, node_score)[0]
    return F.cross_entropy(soft(h, logits, node_score).exp(), target, reduction="none")


def hard_loss(h: Hierarchy, logits: Tensor, target: Tensor, node_score: str = "mean") -> Tensor:
    """(B,) hard tree term: the mean over the label's path nodes of the children-CE."""
    total, count = path_losses(h, logits, target, node_score)
    return total / count


# ------------------------------------------------------------------- evaluation metrics, loops
def node_height(h: Hierarchy, node_id: str) -> int:
    """Edges on the longest way down from a node to a leaf."""
    children = h[node_id].children
    return 0 if not children else 1 + max(node_height(h, c) for c in children)


def lca_height(h: Hierarchy, a: int, b: int) -> int:
    """Height of the lowest common ancestor of classes a and b."""
    common = [x for x, y in zip(h.path(a), h.path(b), strict=False) if x.id == y.id]
    return node_height(h, common[-1].id)


def bertinetto(h: Hierarchy, ranked: list[list[int]], targets: list[int], k: int):
    """Mistake severity and average hierarchical distance @1 and @k, one sample at a time."""
    severities = [lca_height(h, r[0], t) for r, t in zip(ranked, targets, strict=True) if r[0] != t]
    per_sample = [
        sum(lca_height(h, c, t) for c in r[:k]) / k for r, t in zip(ranked, targets, strict=True)
    ]
    hdist1 = [lca_height(h, r[0], t) for r, t in zip(ranked, targets, strict=True)]
    return (
        sum(severities) / len(severities),
        sum(hdist1) / len(hdist1),
        sum(per_sample) / len(per_sample),
    )


def predictions(h: Hierarchy, logits: Tensor, node_score: str = "mean") -> list[list[int]]:
    """Per variant (network, NBDT-soft, NBDT-hard), each sample's first-ranked class."""
    soft_log_probs = soft(h, logits, node_score)
    first = [max(range(len(row)), key=lambda c, row=row: (float(row[c]), -c)) for row in logits]
    first_soft = [
        max(range(len(row)), key=lambda c, row=row: (float(row[c]), -c)) for row in soft_log_probs
    ]
    return [first, first_soft, hard(h, logits, node_score).tolist()]


def path_entropy(h: Hierarchy, logits: Tensor, classes: list[int], node_score: str = "mean"):
    """Per sample: the summed entropy (nats) of the decisions on the path to its class."""
    index = {n.id: i for i, n in enumerate(h.inner_nodes)}
    per_node = node_log_probs(h, logits, node_score)
    out = []
    for b, c in enumerate(classes):
        total = 0.0
        for node in h.path(c)[:-1]:
            log_p = per_node[b, index[node.id], : len(node.children)]
            total -= float((log_p.exp() * log_p).sum())
        out.append(total)
    return out
