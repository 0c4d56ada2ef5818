"""The explanation format: a prediction and its path of decisions, as plain frozen dataclasses.

Everything that reads or writes explanations (the model, the trainer, the CLI's JSON, the HTML
page) takes the field list from these dataclasses, so a new field is added here once; the model
and the ONNX Runtime explainer build them with :func:`explanations_from_arrays`. Torch-free.

Evidence travels in JSON as data URIs: a step's ``saliency`` map as an 8-bit grayscale PNG
(pixel value / 255 is the map's value, so a round trip is exact to 1/255), an example's
thumbnail as the PNG it is.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nbdt.hierarchy import Hierarchy

from nbdt._messages import for_terminal

# A field with this metadata may be absent from a record; it then takes the given value.
_MAY_BE_ABSENT = "absent"


def _optional(value: Any, default: Any = dataclasses.MISSING, compare: bool = True) -> Any:
    return field(default=default, compare=compare, metadata={_MAY_BE_ABSENT: value})


_PNG_URI = "data:image/png;base64,"


@dataclass(frozen=True)
class Example:
    """One training image behind a decision: dataset index, true class, score, PNG thumbnail.

    ``score`` is the branch probability (node examples) or the cosine similarity (nearest)."""

    index: int
    class_index: int
    label: str
    score: float
    thumbnail: bytes


def format_probability(p: float) -> str:
    """A probability as text and pages print it: one decimal, ``<0.1%`` for a tiny non-zero one
    (which one decimal would round to a misleading ``0.0%``)."""
    return "<0.1%" if 0 < p < 0.0005 else f"{p:.1%}"


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
    # The names every output shows (nbdt.labels.display_names: "footwear + Bag", "Sandal or
    # Sneaker"); "" in records made before they existed, which then show the labels.
    display: str = _optional("", "")
    child_display: str = _optional("", "")
    runner_up_display: str = _optional("", "")
    # Evidence (explain(..., evidence=True, examples=...)): where in the image the node was
    # pushed towards the child rather than the runner-up, an (H, W) float32 map in [0, 1] at the
    # input's resolution; the representative training images of both children; the training
    # images nearest to this one among those the node sends to the child taken.
    saliency: Any = _optional(None, None, compare=False)
    child_examples: tuple[Example, ...] = _optional((), ())
    runner_up_examples: tuple[Example, ...] = _optional((), ())
    nearest: tuple[Example, ...] = _optional((), ())


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
        """One line: every step of ``path``, as the page and the JSON show it (the child's display
        name and branch probability), nothing merged. Names are escaped for the terminal
        (:func:`nbdt._messages.for_terminal`)."""
        decisions = " -> ".join(
            f"{for_terminal(step.child_display or step.child_label)}"
            f" ({format_probability(step.probability)})"
            for step in self.path
        )
        return f"Prediction: {for_terminal(self.label)} // Decisions: {decisions}"

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
    if isinstance(value, bytes):
        return png_data_uri(value)
    if hasattr(value, "__array__"):
        return saliency_png(value)
    return value


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,`` URI (how JSON and the pages carry images)."""
    return _PNG_URI + base64.b64encode(png).decode("ascii")


def saliency_png(saliency: Any) -> str:
    """An (H, W) map in [0, 1] as an 8-bit grayscale PNG data URI (the JSON form)."""
    import numpy as np
    from PIL import Image

    pixels = (np.clip(np.asarray(saliency, dtype=np.float32), 0, 1) * 255).round()
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return png_data_uri(buffer.getvalue())


def _png_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value.startswith(_PNG_URI):
        raise ValueError(f"{what}: expected a {_PNG_URI}... URI")
    try:
        return base64.b64decode(value[len(_PNG_URI) :], validate=True)
    except ValueError:
        raise ValueError(f"{what}: damaged base64 data") from None


def saliency_from_json(value: Any, what: str = "saliency") -> Any:
    """A saliency map from its JSON form (a PNG data URI) or an array, as float32 (H, W)."""
    import numpy as np
    from PIL import Image

    if value is None:
        return None
    if hasattr(value, "__array__"):
        array = np.asarray(value, dtype=np.float32)
    else:
        try:
            with Image.open(io.BytesIO(_png_bytes(value, what))) as image:
                array = np.asarray(image.convert("L"), dtype=np.float32) / 255
        except OSError:
            raise ValueError(f"{what}: not a PNG image") from None
    if array.ndim != 2:
        raise ValueError(f"{what}: expected an (H, W) map, got shape {array.shape}")
    return array


# The records an explanation nests (its tuple fields), and what an error calls each of them.
_NESTED = {
    "top_k": (TopClass, "top_k"),
    "path": (Step, "path step"),
    "child_examples": (Example, "child example"),
    "runner_up_examples": (Example, "runner-up example"),
    "nearest": (Example, "nearest example"),
}


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
    if f.type == "bytes":
        return _png_bytes(value, what)
    if f.name == "saliency":
        return saliency_from_json(value, what)
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
    display: Mapping[str, str] | None = None,
) -> list[Explanation]:
    """One :class:`Explanation` per sample from the decision rules' outputs (``NBDT.explain``
    and the ONNX Runtime explainer both build theirs here).

    ``node_log_probs`` (B, N, K) holds each inner node's child log-probabilities (padding -inf),
    ``class_log_probs`` (B, C) soft inference's, ``predicted`` (B,) the classes to explain; the
    arithmetic stays in their dtype (float32 from a model), vectorised over the batch.
    ``display`` maps node ids to their names as every output shows them (default:
    :func:`nbdt.labels.display_names`).
    """
    if display is None:
        from nbdt.labels import display_names

        display = display_names(hierarchy)
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
                    display[node.id],
                    display[child.id],
                    display[runner_up.id],
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
