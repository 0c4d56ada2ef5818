"""The class hierarchy users meet: a :class:`~nbdt.tree.Tree` with builders and edits as methods.

``Hierarchy.induced/wordnet/random/build`` call :mod:`nbdt.builders` and ``move/group/ungroup/
rename/remove_class/edit`` call :mod:`nbdt.edits`; both modules work on the plain Tree below this
one, so nothing imports back up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nbdt import builders, edits
from nbdt.tree import Node, Tree

__all__ = ["Hierarchy", "Node"]


class Hierarchy(Tree):
    """A validated tree over classes (see :class:`~nbdt.tree.Tree`), with the builders as
    class methods and the edits as methods; every one returns a new Hierarchy."""

    # --------------------------------------------------------------- builders
    @classmethod
    def of(cls, tree: Tree) -> Hierarchy:
        """The Hierarchy of a tree's nodes and class order (the tree itself when it is one)."""
        return tree if isinstance(tree, cls) else cls(tree.nodes, tree.class_ids)

    @classmethod
    def build(
        cls, kind: str, classes: Sequence[str], *, weights: Any = None, **options: Any
    ) -> Hierarchy:
        """Build with the builder named ``kind`` (a key of :data:`nbdt.builders.BUILDERS`); see
        :func:`nbdt.builders.build` for ``weights`` and the ``options`` each builder takes."""
        return cls.of(builders.build(kind, classes, weights=weights, **options))

    @classmethod
    def induced(cls, weights_or_model: Any, classes: Sequence[str], **kwargs: Any) -> Hierarchy:
        """Agglomerative clustering of classifier weight rows; see :func:`nbdt.builders.induced`."""
        return cls.of(builders.induced(weights_or_model, classes, **kwargs))

    @classmethod
    def wordnet(cls, classes: Sequence[str], **kwargs: Any) -> Hierarchy:
        """The WordNet hypernym tree of the classes; see :func:`nbdt.builders.wordnet`."""
        return cls.of(builders.wordnet(classes, **kwargs))

    @classmethod
    def random(
        cls, classes: Sequence[str], seed: int = 0, branching: int = 2, **kwargs: Any
    ) -> Hierarchy:
        """A seeded random tree (the ablation baseline); see :func:`nbdt.builders.random`."""
        return cls.of(builders.random(classes, seed=seed, branching=branching, **kwargs))

    # ------------------------------------------------------------------ edits
    def move(self, node: str, new_parent: str) -> Hierarchy:
        """A new hierarchy with ``node`` moved under ``new_parent``; see :func:`nbdt.edits.move`."""
        return edits.move(self, node, new_parent)

    def group(self, children: Sequence[str], label: str | None = None) -> Hierarchy:
        """A new inner node over some siblings; see :func:`nbdt.edits.group`."""
        return edits.group(self, children, label)

    def ungroup(self, node: str) -> Hierarchy:
        """An inner node removed, its children moved up; see :func:`nbdt.edits.ungroup`."""
        return edits.ungroup(self, node)

    def rename(self, node: str, label: str) -> Hierarchy:
        """A node with the user's label; see :func:`nbdt.edits.rename`."""
        return edits.rename(self, node, label)

    def remove_class(self, name: str) -> Hierarchy:
        """A class dropped; see :func:`nbdt.edits.remove_class`."""
        return edits.remove_class(self, name)

    def edit(self, edits_file: str | os.PathLike[str]) -> Hierarchy:
        """An edit file applied in order; see :func:`nbdt.edits.apply_edits`."""
        return edits.apply_edits(self, edits_file)
