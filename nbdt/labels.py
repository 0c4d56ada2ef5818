"""Display names that describe a node's group: the WordNet concept that best fits its classes.

A node's ``label`` stays its lowest common hypernym (always true, often empty: "artifact" over
half of ImageNet). What terminal, pages, JSON and ONNX show is its display name: the concept
with the best *fit* to the node's classes, F1 of recall (share of the node's classes under the
concept) and precision (share of all the tree's classes under the concept that are in the node),
with the exceptions stated ("dog (52 of 55) + wolf, hyena, fox"), or the classes themselves
("Sandal or Sneaker") for up to three; never an ancestor's or a sibling's concept again. A name
the user gave (``rename``) wins. docs/names.md explains the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from nbdt import wordnet as wn
from nbdt.classes import is_wordnet_id
from nbdt.tree import Node, Tree

MAX_LISTED = 3  # classes named in a class-list name, and exceptions named after a concept

TreeT = TypeVar("TreeT", bound=Tree)


def class_list(names: Sequence[str], max_listed: int = MAX_LISTED) -> str:
    """ "A or B", "A, B or C", or the first ``max_listed`` and a count: "A, B, C +12 more"."""
    if len(names) <= max_listed:
        return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return f"{', '.join(names[:max_listed])} +{len(names) - max_listed} more"


def _concept_name(text: str, inside: int, everywhere: int, extras: Sequence[str]) -> str:
    """'dog', 'dog (52 of 55)', 'dog + wolf, fox' or 'dog (52 of 55) + wolf, +4 more'."""
    if inside < everywhere:
        text += f" ({inside} of {everywhere})"
    if extras:
        text += " + " + ", ".join(extras[:MAX_LISTED])
        if len(extras) > MAX_LISTED:
            text += f" +{len(extras) - MAX_LISTED} more"
    return text


def name_nodes(tree: Tree) -> dict[str, tuple[str, float | None]]:
    """Each node's display name and its fit (see the module docstring), computed from WordNet.

    Root first; a node's children take concepts in order of their best fit, each the best one
    whose name no ancestor and no earlier sibling took, or two ("hound or terrier") where their
    union fits clearly better. A leaf shows its class; a name the user gave wins (its fit is
    that of its concept, when it names one).
    """
    columns, table = wn.hypernym_table([leaf.wnid or "" for leaf in tree.leaves])  # (C, K)
    inner = tree.inner_nodes
    row = {node.id: r for r, node in enumerate(inner)}
    member = np.zeros((len(inner), tree.num_classes), dtype=bool)
    for r, node in enumerate(inner):
        member[r, list(tree.leaf_indices(node.id))] = True
    inside = np.rint(member.astype(float) @ table).astype(int)  # (N, K): classes under each
    size = member.sum(1)
    fit = 2 * inside / (size[:, None] + table.sum(0))
    ranking = np.argsort(-fit, axis=1, kind="stable")  # ties: the deeper concept
    concept_label = [wn.label(c) for c in columns]
    columns_named: dict[str, list[int]] = {}
    for k, text in enumerate(concept_label):
        columns_named.setdefault(text, []).append(k)
    class_names = [_class_name(leaf) for leaf in tree.leaves]

    def choose(node: Node, used: set[str]) -> tuple[int, ...]:
        """The columns of the concepts that name the node (none: no concept covers any)."""
        r = row[node.id]
        if given(node):
            return (columns.index(node.wnid),) if node.wnid in columns else ()
        taken = np.zeros(len(columns), dtype=bool)
        taken[[k for text in used for k in columns_named.get(text, ())]] = True
        ranked = ranking[r]
        free = ranked[(inside[r, ranked] > 0) & ~taken[ranked]][:_CANDIDATES].tolist()
        if not free or fit[r, free[0]] >= 1 or size[r] <= MAX_LISTED:
            return tuple(free[:1])
        pairs = _best_pair(member[r], table[:, free])
        return (
            (free[pairs[0]], free[pairs[1]])
            if pairs[2] > fit[r, free[0]] + _PAIR_GAIN
            else (free[0],)
        )

    def display(node: Node, chosen: tuple[int, ...], used: set[str]) -> tuple[str, float | None]:
        classes = list(tree.leaf_indices(node.id))
        names = [class_names[i] for i in classes]
        covered = table[:, list(chosen)].any(1)
        hits, everywhere = int(covered[classes].sum()), int(covered.sum())
        fits = 2 * hits / (len(classes) + everywhere)
        if given(node):
            fits = fits if chosen else None
            if node.label in used:  # a person's name repeated below: its classes tell it apart
                return f"{node.label}: {class_list(names)}", fits
            return node.label, fits
        text = " or ".join(concept_label[k] for k in chosen)
        if chosen and hits == len(classes) == everywhere:
            return text, 1.0  # exact
        if len(names) <= MAX_LISTED:
            return class_list(names), 1.0  # the classes themselves describe the node exactly
        if not chosen:
            return class_list(names), 0.0
        extras = [n for i, n in zip(classes, names, strict=True) if not covered[i]]
        return _concept_name(text, hits, everywhere, extras), fits

    out: dict[str, tuple[str, float | None]] = {
        leaf.id: (name, 1.0) for leaf, name in zip(tree.leaves, class_names, strict=True)
    }
    root = tree.root
    chosen = choose(root, set())
    out[root.id] = display(root, chosen, set())
    above = {root.id: {out[root.id][0], *(concept_label[k] for k in chosen)}}
    for node in inner:
        children = [tree[c] for c in node.children if c in row]
        children.sort(key=lambda c: -fit[row[c.id]].max(initial=0))
        used = set(above[node.id])
        for child in children:
            chosen = choose(child, used)
            out[child.id] = display(child, chosen, used)
            taken = {out[child.id][0], *(concept_label[k] for k in chosen)}
            used |= taken
            above[child.id] = above[node.id] | taken
    return out


_CANDIDATES = 24  # concepts (best single fits first) among which a pair name is sought
_PAIR_GAIN = 0.05  # how much better two concepts must fit than the best one to be named


def _class_name(leaf: Node) -> str:
    """A class's name: its label, or its synset's name where the label is only its WordNet id
    (the reference implementation's files name leaves by id alone)."""
    if leaf.wnid is not None and leaf.label == leaf.wnid and is_wordnet_id(leaf.wnid):
        return wn.label(leaf.wnid)
    return leaf.label


def given(node: Node) -> bool:
    """Whether a person named the node: ``rename`` (``user_label``), or a file's label that is
    neither WordNet's nor nbdt's synthetic one nor the node's id. Such a name wins."""
    return node.user_label or (
        node.wnid is None and node.label != node.id and not node.label.startswith("synthetic")
    )


def _best_pair(member: np.ndarray, columns: np.ndarray) -> tuple[int, int, float]:
    """The two of ``columns`` ((C, m) booleans: classes under each candidate concept) whose
    union fits the classes in ``member`` (C,) best: their positions and the union's fit."""
    union = columns[:, :, None] | columns[:, None, :]  # (C, m, m)
    hits = np.einsum("c,cij->ij", member.astype(float), union)
    fit = 2 * hits / (member.sum() + union.sum(0))
    i, j = np.unravel_index(np.argmax(np.triu(fit, 1)), fit.shape)
    return int(i), int(j), float(fit[i, j])


def named(tree: TreeT) -> TreeT:
    """The same tree with every node's display name and fit stored (``Node.display``/``fit``),
    as the builders and edits return trees and ``nbdt-hierarchy name`` writes them."""
    names = name_nodes(tree)
    nodes = [
        dataclasses.replace(n, display=names[n.id][0], fit=names[n.id][1])
        if not n.is_leaf
        else dataclasses.replace(n, display=None if names[n.id][0] == n.label else names[n.id][0])
        for n in tree.nodes
    ]
    return type(tree)(nodes, tree.class_ids)


def with_names(tree: TreeT) -> TreeT:
    """The tree itself when its inner nodes carry display names (built, edited or named trees),
    else :func:`named` (a file written without them, such as the reference implementation's)."""
    return tree if all(n.display is not None for n in tree.inner_nodes) else named(tree)


def display_names(tree: Tree) -> dict[str, str]:
    """Each node's name as every output (terminal, pages, JSON, ONNX) shows it."""
    return {n.id: n.label if n.display is None else n.display for n in with_names(tree).nodes}
