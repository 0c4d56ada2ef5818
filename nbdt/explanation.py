"""The explanation format: a prediction and its path of decisions, as plain frozen dataclasses.

Everything that reads or writes explanations (the model, the trainer, the CLI's JSON, the HTML
page) takes the field list from these dataclasses, so a new field is added here once. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nbdt._messages import for_terminal

# A field with this metadata may be absent from a record; it then takes the given value.
_MAY_BE_ABSENT = "absent"


def _optional(value: Any) -> Any:
    return field(metadata={_MAY_BE_ABSENT: value})


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
        the probability of reaching the last of them. ``path`` keeps every step. Labels are
        escaped for the terminal (:func:`nbdt._messages.for_terminal`)."""
        merged: list[list[Any]] = []
        for step in self.path:
            if merged and merged[-1][0] == step.child_label:
                merged[-1][1] *= step.probability
            else:
                merged.append([step.child_label, step.probability])
        decisions = " -> ".join(
            f"{for_terminal(label)} ({format_probability(p)})" for label, p in merged
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
