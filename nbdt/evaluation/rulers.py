"""The trees distances are measured on: lowest-common-ancestor tables of a hierarchy, and a
second (reference) hierarchy over the same classes aligned to the model's class order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nbdt.classes import is_wordnet_id
from nbdt.hierarchy import Hierarchy
from nbdt.tree import Tree


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
