"""Node labels that tell the reader something: a label repeating an ancestor's gets its classes.

An induced tree names each node by the lowest common hypernym of its leaves, so a child often
carries its parent's label ("garment -> garment"). Wherever a path is shown, such a node reads
with what sets it apart: its classes when few, else its most frequent classes and a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nbdt.hierarchy import Hierarchy

MAX_LISTED = 3


def repeats_ancestor(hierarchy: Hierarchy, node_id: str) -> bool:
    """Whether the node's label is the label of one of its ancestors."""
    label = hierarchy[node_id].label
    parent = hierarchy.parent(node_id)
    while parent is not None:
        if parent.label == label:
            return True
        parent = hierarchy.parent(parent.id)
    return False


def distinct_label(
    hierarchy: Hierarchy,
    node_id: str,
    class_counts: Sequence[int] | Mapping[int, int] | None = None,
    max_listed: int = MAX_LISTED,
) -> str:
    """The node's label, followed by its classes where the label repeats an ancestor's.

    "garment: Pullover, Coat, Shirt" when the node has at most ``max_listed`` classes, else its
    ``max_listed`` most frequent classes (by ``class_counts``, e.g. training-set counts indexed by
    class; class order without them) and how many more: "artifact: car, bus, truck +12 more".
    """
    node = hierarchy[node_id]
    if node.is_leaf or not repeats_ancestor(hierarchy, node_id):
        return node.label
    classes = list(hierarchy.leaf_indices(node_id))
    names = hierarchy.classes
    if len(classes) <= max_listed:
        return f"{node.label}: {', '.join(names[c] for c in classes)}"
    if class_counts is not None:
        classes.sort(key=lambda c: -class_counts[c])  # stable: ties keep class order
    shown = ", ".join(names[c] for c in classes[:max_listed])
    return f"{node.label}: {shown} +{len(classes) - max_listed} more"
