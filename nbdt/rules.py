"""Embedded decision rules: a hierarchy compiled into index tensors over the network's logits.

Every inner node chooses among its children by a score computed from the logits z (B, C); soft
inference multiplies the branch probabilities along each root-to-leaf path, hard inference follows
the best child from the root. Nothing loops over samples, nodes or classes at run time.

How it is computed, and why. The leaves are numbered in depth-first order, so the leaves under any
node form one contiguous range of positions. A child's "mean" score (the paper's rule: the mean of
its leaves' logits) is then a difference of two prefix sums of z in that order (accumulated in
float64, so exact), and a class's soft log-probability (the sum of the edge log-probabilities on
its path) is a prefix sum of a difference array holding +log p at each edge's first leaf and
-log p one past its last: O(B * C) work and the two maps are each other's gradient. The losses
need only the nodes on each label's path, so they read (B, depth, K) scores and never score the
whole tree; hard inference reads (B, K) scores per level. Measured with scripts/bench_rules.py on
one CPU thread, the shipped ImageNet tree (C = 1000, binary, depth 16), B = 256: every edge's
score, forward + backward, costs 24 ms as a dense leaf-mean matrix product z @ M.T, 2.5 ms as a
sparse CSR product and 4.2 ms as prefix sums; the whole soft loss costs 2.3 ms (plain
cross-entropy 0.33 ms) because it reads only the path nodes, which a matrix product cannot do.
So: prefix sums, one mechanism for everything, no sparse tensors (beta, and missing on some
devices). The "marginal" score (the log-sum-exp of a child's leaves' logits) is no difference of
prefix sums without cancellation, so it is a segmented log-sum-exp over the (edge, leaf) pairs,
O(B * C * depth): meant for explanations, not for training speed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from nbdt.explanation import class_paths
from nbdt.hierarchy import Hierarchy
from nbdt.tree import Tree

_Method = TypeVar("_Method", bound=Callable[..., Tensor])


def _full_precision(method: _Method) -> _Method:
    """Check the logits, cast them to float32 (float64 stays float64) and turn autocast off."""

    @functools.wraps(method)
    def wrapper(self: DecisionRules, logits: Tensor, *args: Tensor) -> Tensor:
        logits = self._check_logits(logits)
        with torch.autocast(logits.device.type, enabled=False):
            return method(self, logits, *args)

    return wrapper  # type: ignore[return-value]


def _accumulate(values: Tensor) -> torch.dtype:
    """Prefix sums run in float64 wherever the device has it (Apple's MPS does not)."""
    return torch.float32 if values.device.type == "mps" else torch.float64


def _prefix_sums(values: Tensor, leaf_order: Tensor) -> Tensor:
    """(B, C+1) prefix sums of class-ordered ``values`` (B, C) in depth-first leaf order."""
    prefix = values.new_zeros(values.shape[0], values.shape[1] + 1, dtype=_accumulate(values))
    prefix[:, 1:] = values.index_select(1, leaf_order)
    return prefix.cumsum_(dim=1)


def _range_difference(prefix: Tensor, start: Tensor, end: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, R) sums over the ranges [start, end) (B, R) read from prefix sums, cast to ``dtype``."""
    return prefix.gather(1, end).sub_(prefix.gather(1, start)).to(dtype)


def _range_sums(values: Tensor, start: Tensor, end: Tensor, leaf_order: Tensor) -> Tensor:
    """Sums of class-ordered ``values`` (B, C) over depth-first ranges [start, end) (B, R)."""
    return _range_difference(_prefix_sums(values, leaf_order), start, end, values.dtype)


def _spread(values: Tensor, start: Tensor, end: Tensor, leaf_position: Tensor) -> Tensor:
    """For every class, the sum of ``values`` (B, R) over the ranges holding its leaf: (B, C).

    +v at each range's start and -v at its end, then a prefix sum: the adjoint of _range_sums.
    Runs inside autograd Functions only, so it works in place (fewer large allocations).
    """
    wide = values.to(_accumulate(values), copy=True)
    delta = wide.new_zeros(values.shape[0], leaf_position.shape[0] + 1)
    delta.scatter_add_(1, start, wide).scatter_add_(1, end, wide.neg_()).cumsum_(dim=1)
    return delta.to(values.dtype).index_select(1, leaf_position)


class _RangeSum(torch.autograd.Function):
    """Differentiable _range_sums; its gradient is _spread (and the other way round below)."""

    @staticmethod
    def forward(ctx, values, start, end, leaf_order, leaf_position):  # type: ignore[override]
        ctx.save_for_backward(start, end, leaf_position)
        return _range_sums(values, start, end, leaf_order)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        start, end, leaf_position = ctx.saved_tensors
        return _spread(grad, start, end, leaf_position), None, None, None, None


class _Spread(torch.autograd.Function):
    """Differentiable _spread."""

    @staticmethod
    def forward(ctx, values, start, end, leaf_order, leaf_position):  # type: ignore[override]
        ctx.save_for_backward(start, end, leaf_order)
        return _spread(values, start, end, leaf_position)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        start, end, leaf_order = ctx.saved_tensors
        return _range_sums(grad, start, end, leaf_order), None, None, None, None


class NonFiniteLogits(ValueError):
    """Logits holding NaN or infinity: no decision can be read from them. ``rows`` are the
    samples concerned (batch indices)."""

    def __init__(self, rows: list[int], what: str = "logits"):
        self.rows = rows
        super().__init__(
            f"non-finite {what} (NaN or infinity) for sample(s) {rows[:10]}: the model's"
            " weights or the input are damaged"
        )


def check_finite(logits: Tensor, what: str = "logits") -> None:
    """Raise :class:`NonFiniteLogits` naming the rows of ``logits`` that hold NaN or infinity.

    One host-device synchronisation: for inference paths, not for every training step. Skipped
    while ``torch.export`` traces (ONNX export): a graph cannot branch on the data.
    """
    if torch.compiler.is_exporting():
        return
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteLogits(bad.nonzero().flatten().tolist(), what)


class DecisionRules(nn.Module):
    """A hierarchy's decision rules over a network's logits.

    ``node_score="mean"`` scores a child by the mean of its leaves' logits (the paper's embedded
    decision rules; meant for networks fine-tuned with tree supervision). ``"marginal"`` scores
    it by the log-sum-exp of its leaves' logits, so a branch probability is the network's own
    probability mass under that child and soft inference equals ``log_softmax(logits)`` exactly:
    it explains any classifier as it is.

    Inner nodes are indexed in ``hierarchy.inner_nodes`` order (root first, breadth first) and
    children in ``node.children`` order. The compiled tensors are non-persistent buffers (they
    follow ``.to(device)`` and stay out of ``state_dict``: they are derived from the hierarchy).
    Among them, for reading paths: ``path_node`` and ``path_slot`` (C, max_depth), the inner node
    and the child slot taken at each depth on a class's root-to-leaf path (0 past its end),
    ``path_length`` (C,) and ``path_mask`` (C, max_depth). Logits must be finite.
    """

    def __init__(self, hierarchy: Hierarchy, node_score: str = "mean") -> None:
        super().__init__()
        if not isinstance(hierarchy, Tree):
            raise TypeError(f"hierarchy must be a nbdt.Hierarchy, got {type(hierarchy).__name__}")
        if node_score not in NODE_SCORES:
            known = " or ".join(map(repr, NODE_SCORES))
            raise ValueError(f"node_score must be {known}, got {node_score!r}")
        self.hierarchy = hierarchy
        self.node_score = node_score
        self._score = NODE_SCORES[node_score]
        inner = hierarchy.inner_nodes
        self.num_classes = hierarchy.num_classes
        self.num_nodes = len(inner)
        self.max_children = max(len(node.children) for node in inner)
        self.max_depth = hierarchy.max_depth
        n, k, d = self.num_nodes, self.max_children, self.max_depth

        # Depth-first leaf order: the leaves under every node occupy positions [start, end).
        preorder, stack = [], [hierarchy.root.id]
        while stack:
            node_id = stack.pop()
            preorder.append(node_id)
            stack.extend(reversed(hierarchy[node_id].children))
        class_of = {leaf_id: j for j, leaf_id in enumerate(hierarchy.class_ids)}
        leaf_order = [class_of[i] for i in preorder if i in class_of]
        position = {hierarchy.class_ids[j]: p for p, j in enumerate(leaf_order)}
        span: dict[str, tuple[int, int]] = {}
        for node_id in reversed(preorder):
            children = hierarchy[node_id].children
            if children:
                span[node_id] = (span[children[0]][0], span[children[-1]][1])
            else:
                span[node_id] = (position[node_id], position[node_id] + 1)

        # Node-by-child tables (N, K): [i, k] is child k of inner node i. Padding slots have
        # the empty leaf range [0, 0); descent targets are i for inner node i, N + j for class j.
        node_index = {node.id: i for i, node in enumerate(inner)}
        start, end, target = ([[0] * k for _ in range(n)] for _ in range(3))
        for i, node in enumerate(inner):
            for slot, child in enumerate(node.children):
                start[i][slot], end[i][slot] = span[child]
                target[i][slot] = node_index[child] if child in node_index else n + class_of[child]
        start, end, target = torch.tensor(start), torch.tensor(end), torch.tensor(target)
        mask = end > start
        self.register_buffer("leaf_order", torch.tensor(leaf_order), persistent=False)
        self.register_buffer("leaf_position", torch.argsort(self.leaf_order), persistent=False)
        self.register_buffer("child_start", start, persistent=False)
        self.register_buffer("child_end", end, persistent=False)
        self.register_buffer("child_size", (end - start).clamp(min=1), persistent=False)
        self.register_buffer("child_mask", mask, persistent=False)
        self.register_buffer("child_target", target, persistent=False)
        # Edges (the real slots) and their leaf ranges. Per-node softmaxes run over a padded
        # (B, K, N) layout, K before N because a CPU log_softmax over a short last axis is ~20x
        # slower; edge_slot is each edge's flat index k * N + i there, slot_edge the inverse.
        edge_node, edge_k = mask.t().nonzero(as_tuple=True)[::-1]
        slot_edge = torch.zeros(n, k, dtype=torch.long)
        slot_edge[edge_node, edge_k] = torch.arange(len(edge_node))
        self.register_buffer("edge_slot", edge_k * n + edge_node, persistent=False)
        self.register_buffer("edge_start", start[edge_node, edge_k], persistent=False)
        self.register_buffer("edge_end", end[edge_node, edge_k], persistent=False)
        self.register_buffer("slot_edge", slot_edge, persistent=False)

        # Root-to-leaf paths: the (node, slot) taken at each depth, padded to max_depth.
        path_node, path_slot, length = (torch.from_numpy(a) for a in class_paths(hierarchy))
        self.register_buffer("path_node", path_node, persistent=False)
        self.register_buffer("path_slot", path_slot.contiguous(), persistent=False)
        self.register_buffer("path_length", length, persistent=False)
        self.register_buffer("path_mask", torch.arange(d) < length[:, None], persistent=False)

        self._score.compile(self)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, inner_nodes={self.num_nodes},"
            f" max_children={self.max_children}, depth={self.max_depth},"
            f" node_score={self.node_score!r}"
        )

    # ----------------------------------------------------------------- public API
    @_full_precision
    def node_log_probs(self, logits: Tensor) -> Tensor:
        """(B, N, K) log-probabilities of each inner node's children; padding slots are -inf.

        A transposed view of a (B, K, N) tensor.
        """
        return self._padded_log_probs(self._edge_scores(logits)).transpose(1, 2)

    @_full_precision
    def soft(self, logits: Tensor) -> Tensor:
        """(B, C) class log-probabilities: the sum of the branch log-probabilities on each path."""
        padded = self._padded_log_probs(self._edge_scores(logits)).flatten(1)
        edges = padded.gather(1, self.edge_slot.expand(logits.shape[0], -1))
        start, end = self.edge_start.expand(edges.shape), self.edge_end.expand(edges.shape)
        return _Spread.apply(edges, start, end, self.leaf_order, self.leaf_position)

    @_full_precision
    def hard(self, logits: Tensor) -> Tensor:
        """(B,) class indices by greedy descent from the root, one vectorised step per level.

        NaN or infinite logits raise :class:`NonFiniteLogits` (any class would be a made-up answer).
        """
        check_finite(logits)
        table = self._score.descent_table(self, logits)
        node = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        for _ in range(self.max_depth):
            at_inner = node < self.num_nodes
            here = torch.where(at_inner, node, 0)  # samples already at a leaf idle at the root
            scores = self._score.level_scores(self, table, here, logits.dtype)
            scores = scores.masked_fill(~self.child_mask[here], float("-inf"))
            # max(dim).indices picks the first best child, as argmax does
            best = scores.max(dim=1, keepdim=True).indices
            node = torch.where(at_inner, self.child_target[here].gather(1, best)[:, 0], node)
        return node - self.num_nodes

    @_full_precision
    def path_log_probs(self, logits: Tensor, classes: Tensor) -> Tensor:
        """(B, max_depth) log-probability of each branch on the path to ``classes[b]``, 0-padded.

        Only the nodes on those paths are scored, which is what makes the losses cheap; the
        sum over the last axis is ``soft(logits)[b, classes[b]]``.
        """
        if not isinstance(classes, Tensor) or classes.shape != logits.shape[:1]:
            raise ValueError(
                f"classes must be a tensor of shape ({logits.shape[0]},) to match the logits"
            )
        in_range = ((classes >= 0) & (classes < self.num_classes)).all()
        if classes.device.type == "cpu":
            if not bool(in_range):  # a negative index would read another class's path
                raise ValueError(f"classes must be class indices in [0, {self.num_classes})")
        else:  # no host synchronisation in the training step: the device checks it
            torch._assert_async(
                in_range, f"classes must be class indices in [0, {self.num_classes})"
            )
        scores = self._path_scores(logits, self.path_node[classes])  # (B, K, D)
        taken = torch.log_softmax(scores, dim=1).gather(1, self.path_slot[classes][:, None])
        return taken[:, 0].masked_fill(~self.path_mask[classes], 0.0)

    # ------------------------------------------------------------------- internals
    def _check_logits(self, logits: Tensor) -> Tensor:
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have shape {tuple(logits.shape)}, expected (batch, {self.num_classes})"
                f" for a hierarchy with {self.num_classes} classes: build the hierarchy from"
                " this model's classes"
            )
        return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)

    def _edge_scores(self, logits: Tensor) -> Tensor:
        """(B, E) the score of every edge's child."""
        return self._score.edge_scores(self, logits)

    def _padded_log_probs(self, edge_scores: Tensor) -> Tensor:
        """(B, K, N) per-node log_softmax over the children, padding slots -inf."""
        batch = edge_scores.shape[0]
        padded = edge_scores.new_full((batch, self.max_children * self.num_nodes), float("-inf"))
        padded = padded.scatter(1, self.edge_slot.expand(batch, -1), edge_scores)
        return torch.log_softmax(padded.reshape(batch, self.max_children, self.num_nodes), dim=1)

    def _path_scores(self, logits: Tensor, nodes: Tensor) -> Tensor:
        """(B, K, P) child scores of ``nodes`` (B, P), -inf padded, reading only those nodes."""
        mask = self.child_mask[nodes].transpose(1, 2)
        scores = self._score.path_scores(self, logits, nodes)
        return scores.masked_fill(~mask, float("-inf"))

    def _edge_logsumexp(self, logits: Tensor) -> Tensor:
        """(B, E) log-sum-exp of each child's leaves' logits: a segmented reduction over the
        (edge, class) pairs, in (pairs, B) layout so the index operations move whole rows."""
        batch, edges = logits.shape[0], self.edge_slot.shape[0]
        values = logits.t().index_select(0, self.pair_class)
        rows = self.pair_edge[:, None].expand(-1, batch)
        peak = values.new_full((edges, batch), float("-inf"))
        peak = peak.scatter_reduce(0, rows, values.detach(), "amax")
        spread = torch.exp(values - peak[self.pair_edge])
        mass = values.new_zeros((edges, batch)).index_add(0, self.pair_edge, spread)
        return (peak + torch.log(mass)).t()


# ------------------------------------------------------------------ node scores
class _MeanScore:
    """The paper's rule: a child's score is the mean of its leaves' logits, a difference of
    prefix sums over its depth-first leaf range."""

    @staticmethod
    def compile(rules: DecisionRules) -> None:
        """Nothing beyond the leaf ranges every rule has."""

    @staticmethod
    def edge_scores(rules: DecisionRules, logits: Tensor) -> Tensor:
        start = rules.edge_start.expand(logits.shape[0], -1)
        end = rules.edge_end.expand(logits.shape[0], -1)
        sums = _RangeSum.apply(logits, start, end, rules.leaf_order, rules.leaf_position)
        return sums / (rules.edge_end - rules.edge_start)

    @staticmethod
    def path_scores(rules: DecisionRules, logits: Tensor, nodes: Tensor) -> Tensor:
        """(B, K, P) scores of the children of ``nodes`` (B, P), padding unmasked."""
        batch, k = logits.shape[0], rules.max_children
        start = rules.child_start[nodes].transpose(1, 2).flatten(1)
        end = rules.child_end[nodes].transpose(1, 2).flatten(1)
        sums = _RangeSum.apply(logits, start, end, rules.leaf_order, rules.leaf_position)
        return sums.reshape(batch, k, nodes.shape[1]) / rules.child_size[nodes].transpose(1, 2)

    @staticmethod
    def descent_table(rules: DecisionRules, logits: Tensor) -> Tensor:
        return _prefix_sums(logits, rules.leaf_order)

    @staticmethod
    def level_scores(
        rules: DecisionRules, table: Tensor, here: Tensor, dtype: torch.dtype
    ) -> Tensor:
        """(B, K) scores of the children of the nodes ``here`` (B,), read from the table."""
        sums = _range_difference(table, rules.child_start[here], rules.child_end[here], dtype)
        return sums / rules.child_size[here]


class _MarginalScore:
    """A child's score is the log-sum-exp of its leaves' logits: soft inference then equals the
    network's softmax, so any classifier is explained as it is."""

    @staticmethod
    def compile(rules: DecisionRules) -> None:
        """(edge, class) pairs, one per leaf under each child, for the segmented log-sum-exp."""
        sizes = rules.edge_end - rules.edge_start
        first = torch.repeat_interleave(rules.edge_start, sizes)
        offset = torch.arange(int(sizes.sum())) - torch.repeat_interleave(
            torch.cumsum(sizes, 0) - sizes, sizes
        )
        pair_edge = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        rules.register_buffer("pair_edge", pair_edge, persistent=False)
        rules.register_buffer("pair_class", rules.leaf_order[first + offset], persistent=False)

    @staticmethod
    def edge_scores(rules: DecisionRules, logits: Tensor) -> Tensor:
        return rules._edge_logsumexp(logits)

    @staticmethod
    def path_scores(rules: DecisionRules, logits: Tensor, nodes: Tensor) -> Tensor:
        batch, k = logits.shape[0], rules.max_children
        slots = rules.slot_edge[nodes].transpose(1, 2).flatten(1)
        return rules._edge_logsumexp(logits).gather(1, slots).reshape(batch, k, nodes.shape[1])

    @staticmethod
    def descent_table(rules: DecisionRules, logits: Tensor) -> Tensor:
        return rules._edge_logsumexp(logits)

    @staticmethod
    def level_scores(
        rules: DecisionRules, table: Tensor, here: Tensor, dtype: torch.dtype
    ) -> Tensor:
        return table.gather(1, rules.slot_edge[here])


# How a child is scored from the logits, by name (DecisionRules' and nbdt-train's node_score).
NODE_SCORES = {"mean": _MeanScore, "marginal": _MarginalScore}
