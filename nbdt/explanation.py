"""The explanation format: a prediction and its path of decisions, as plain frozen dataclasses.

Everything that reads or writes explanations (the model, the trainer, the CLI's JSON, the HTML
page) takes the field list from these dataclasses, so a new field is added here once; the model
and the ONNX Runtime explainer build them with :func:`explanations_from_arrays`. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nbdt.hierarchy import Hierarchy

# A field with this metadata may be absent from a record; it then takes the given value.
_MAY_BE_ABSENT = "absent"


def _optional(value: Any) -> Any:
    return field(metadata={_MAY_BE_ABSENT: value})


@dataclass(frozen=True)
class Step:
    """One decision on the path: at ``node_id`` the child ``child_id`` was taken.

    ``probability`` is that child's branch probability at the node, ``entropy`` (nats) measures
    how undecided the node was over all its children, and the runner-up is the best other child.
    """

    node_id: str
    label: str
    wnid: str | None = _optional(None)
    entropy: float
    child_id: str
    child_label: str
    probability: float
    runner_up_id: str
    runner_up_label: str
    runner_up_probability: float


@dataclass(frozen=True)
class TopClass:
    """A class and its probability under soft inference."""

    class_index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    """A prediction and the decisions, root to leaf, that led to it.

    ``probability`` is the predicted class's soft-inference probability, which is the product
    of the path's branch probabilities; ``top_k`` ranks classes by that same probability.
    """

    class_index: int
    label: str
    wnid: str | None = _optional(None)
    probability: float
    mode: str = _optional("")
    node_score: str = _optional("")
    top_k: tuple[TopClass, ...] = _optional(())
    path: tuple[Step, ...]

    def __str__(self) -> str:
        """One line. Consecutive steps into children of one label (an induced tree's nodes may
        share their lowest common hypernym) read as one decision: their probabilities multiply,
        the probability of reaching the last of them. ``path`` keeps every step."""
        merged: list[list[Any]] = []
        for step in self.path:
            if merged and merged[-1][0] == step.child_label:
                merged[-1][1] *= step.probability
            else:
                merged.append([step.child_label, step.probability])
        decisions = " -> ".join(f"{label} ({p:.1%})" for label, p in merged)
        return f"Prediction: {self.label} // Decisions: {decisions}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (the documented explanation format)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "explanation") -> Explanation:
        """Read :meth:`to_dict`'s data back, checking it: a ``ValueError`` names what is wrong
        (a missing key, a probability outside [0, 1], a non-finite number)."""
        return _read(cls, data, where)


def field_names(cls: type) -> tuple[str, ...]:
    """The keys of a record of ``Step``, ``TopClass`` or ``Explanation``, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


# The records an explanation nests (its tuple fields), and what an error calls each of them.
_NESTED = {"top_k": (TopClass, "top_k"), "path": (Step, "path step")}


def _read(cls: type, data: Any, where: str, nested: bool = False) -> Any:
    """One record of ``cls`` from a mapping, each value converted to its field's type."""
    fields = dataclasses.fields(cls)
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    missing = [f.name for f in fields if f.name not in data and _MAY_BE_ABSENT not in f.metadata]
    if missing:
        raise ValueError(f"{where}{' is' if nested else ':'} missing keys {missing}")
    values = {}
    for f in fields:
        value = data[f.name] if f.name in data else f.metadata[_MAY_BE_ABSENT]
        if f.name in _NESTED:
            record, name = _NESTED[f.name]
            values[f.name] = tuple(
                _read(record, item, f"{where}: {name} {i}", nested=True)
                for i, item in enumerate(value)
            )
        else:
            values[f.name] = _convert(f, value, f"{where} {f.name}")
    return cls(**values)


def _convert(f: dataclasses.Field, value: Any, what: str) -> Any:
    if f.type == "int":
        return int(value)
    if f.type == "float":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{what} is {number}, expected a finite number")
        if f.name.endswith("probability"):
            if not -1e-6 <= number <= 1 + 1e-6:
                raise ValueError(f"{what} is {number}, expected a probability in [0, 1]")
            number = min(max(number, 0.0), 1.0)
        return number
    if f.type == "str | None":
        return None if value is None else str(value)
    return str(value)


def class_paths(hierarchy: Hierarchy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each class's root-to-leaf path as (C, D) inner-node indices and child slots (0 past the
    end) and (C,) lengths; nodes in ``hierarchy.inner_nodes`` order, as the decision rules."""
    inner = hierarchy.inner_nodes
    trail: dict[str, list[tuple[int, int]]] = {hierarchy.root.id: []}
    for i, node in enumerate(inner):
        for slot, child in enumerate(node.children):
            trail[child] = [*trail[node.id], (i, slot)]
    depth = max(hierarchy.max_depth, 1)
    steps = np.zeros((hierarchy.num_classes, depth, 2), dtype=np.int64)
    lengths = np.zeros(hierarchy.num_classes, dtype=np.int64)
    for c, leaf_id in enumerate(hierarchy.class_ids):
        path = trail[leaf_id]
        lengths[c] = len(path)
        if path:
            steps[c, : len(path)] = path
    return steps[..., 0], steps[..., 1], lengths


def explanations_from_arrays(
    hierarchy: Hierarchy,
    mode: str,
    node_score: str,
    node_log_probs: np.ndarray,
    class_log_probs: np.ndarray,
    predicted: np.ndarray,
    top_k: int,
) -> list[Explanation]:
    """One :class:`Explanation` per sample from the decision rules' outputs (``NBDT.explain``
    and the ONNX Runtime explainer both build theirs here).

    ``node_log_probs`` (B, N, K) holds each inner node's child log-probabilities (padding -inf),
    ``class_log_probs`` (B, C) soft inference's, ``predicted`` (B,) the classes to explain; the
    arithmetic stays in their dtype (float32 from a model), vectorised over the batch.
    """
    nodes_of, slots_of, length_of = class_paths(hierarchy)
    predicted = np.asarray(predicted, dtype=np.int64)
    node_log_probs = np.asarray(node_log_probs)
    class_log_probs = np.asarray(class_log_probs)
    rows = np.arange(len(predicted))
    nodes, slots = nodes_of[predicted], slots_of[predicted]  # (B, D)
    step_log_probs = node_log_probs[rows[:, None], nodes]  # (B, D, K)
    step_probs = np.exp(step_log_probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        entr = np.where(step_probs > 0, -step_probs * np.log(step_probs), 0)
    entropy = entr.astype(step_probs.dtype).sum(-1)
    taken = np.take_along_axis(step_probs, slots[..., None], -1)[..., 0]
    others = step_log_probs.copy()
    np.put_along_axis(others, slots[..., None], -np.inf, -1)
    runner_up_slot = others.argmax(-1)
    runner_up_prob = np.exp(np.take_along_axis(others, runner_up_slot[..., None], -1)[..., 0])
    class_probs = np.exp(class_log_probs)
    k = min(top_k, class_probs.shape[1])
    top_index = np.argsort(-class_probs, axis=1, kind="stable")[:, :k]
    top_prob = np.take_along_axis(class_probs, top_index, 1)
    probability = np.exp(class_log_probs[rows, predicted])

    inner, leaves = hierarchy.inner_nodes, hierarchy.leaves
    explanations = []
    for b, class_index in enumerate(predicted.tolist()):
        steps = []
        for d in range(int(length_of[class_index])):
            node = inner[int(nodes[b, d])]
            child = hierarchy[node.children[int(slots[b, d])]]
            runner_up = hierarchy[node.children[int(runner_up_slot[b, d])]]
            steps.append(
                Step(
                    node.id,
                    node.label,
                    node.wnid,
                    float(entropy[b, d]),
                    child.id,
                    child.label,
                    float(taken[b, d]),
                    runner_up.id,
                    runner_up.label,
                    float(runner_up_prob[b, d]),
                )
            )
        leaf = leaves[class_index]
        top = zip(top_index[b].tolist(), top_prob[b].tolist(), strict=True)
        explanations.append(
            Explanation(
                class_index,
                leaf.label,
                leaf.wnid,
                float(probability[b]),
                mode,
                node_score,
                tuple(TopClass(i, leaves[i].label, p) for i, p in top),
                tuple(steps),
            )
        )
    return explanations
