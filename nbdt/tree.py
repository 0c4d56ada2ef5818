"""The tree value under every hierarchy: an immutable tree whose leaves are the classes, in order.

:class:`Tree` holds the structure, its validation, JSON and rendering; the builders and the edits
make Trees, and :class:`nbdt.hierarchy.Hierarchy` adds the convenience methods on top. Every later
step (rules, losses, explanations, HTML) reads this value; it is saved as networkx node-link JSON,
and files in the reference implementation's format load as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nbdt._io import write_text
from nbdt._messages import for_terminal
from nbdt.classes import check_unique, is_wordnet_id

FORMAT_NAME = "nbdt-hierarchy"
FORMAT_VERSION = 1

# A Tree or a subclass of it: edits return the kind of tree they were given.
TreeT = TypeVar("TreeT", bound="Tree")


@dataclass(frozen=True)
class Node:
    """One node: a unique ``id``, a display ``label``, a WordNet id or None, child ids in order.

    ``user_label`` marks a label the user set (see :func:`nbdt.edits.rename`): tree edits keep it
    instead of recomputing the lowest common hypernym.
    """

    id: str
    label: str
    wnid: str | None = None
    children: tuple[str, ...] = ()
    user_label: bool = False

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def from_wordnet(self) -> bool:
        """Whether the label is a WordNet synset's name (rather than synthetic or given)."""
        return is_wordnet_id(self.wnid)


class Tree:
    """A validated tree over classes (:class:`nbdt.hierarchy.Hierarchy` is the one users meet).

    ``nodes`` may come in any order; ``classes`` lists the leaf ids in class order (class index i is
    the leaf ``classes[i]``). Inner nodes are stored root first, breadth first, children in their
    given order: that order is the one the decision rules index.
    """

    def __init__(self, nodes: Iterable[Node], classes: Sequence[str]):
        nodes = tuple(nodes)
        by_id: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(f"hierarchy nodes must be Node, got {type(node).__name__}")
            if node.id in by_id:
                raise ValueError(f"hierarchy: duplicate node id {node.id!r}")
            by_id[node.id] = node
        if not by_id:
            raise ValueError("hierarchy: no nodes")
        leaf_ids = tuple(str(c) for c in classes)

        parent: dict[str, str] = {}
        for node in nodes:
            if len(node.children) == 1:
                raise ValueError(
                    f"hierarchy: inner node {node.id!r} has a single child {node.children[0]!r}"
                    " (contract it)"
                )
            if len(set(node.children)) != len(node.children):
                raise ValueError(f"hierarchy: node {node.id!r} lists a child twice")
            for child in node.children:
                if child not in by_id:
                    raise ValueError(f"hierarchy: node {node.id!r} has unknown child {child!r}")
                if child in parent:
                    raise ValueError(
                        f"hierarchy: node {child!r} has two parents, {parent[child]!r} and"
                        f" {node.id!r} (not a tree)"
                    )
                parent[child] = node.id
        roots = [n.id for n in nodes if n.id not in parent]
        if len(roots) != 1:
            if not roots:
                raise ValueError("hierarchy: no root (every node has a parent: a cycle)")
            raise ValueError(f"hierarchy: {len(roots)} roots {roots[:5]}, expected one")
        root = roots[0]

        # Breadth-first walk from the root; anything not reached sits on a cycle.
        order = [root]
        depth = {root: 0}
        for node_id in order:
            for child in by_id[node_id].children:
                depth[child] = depth[node_id] + 1
                order.append(child)
        if len(order) != len(by_id):
            stray = sorted(set(by_id) - set(order))
            raise ValueError(
                f"hierarchy: nodes {stray[:5]} are not reachable from the root (cycle)"
            )

        actual_leaves = {n.id for n in nodes if n.is_leaf}
        check_unique(leaf_ids, "hierarchy")
        missing = [c for c in leaf_ids if c not in by_id]
        if missing:
            raise ValueError(f"hierarchy: classes {missing[:5]} are not nodes of the tree")
        not_leaves = [c for c in leaf_ids if c not in actual_leaves]
        if not_leaves:
            raise ValueError(f"hierarchy: classes {not_leaves[:5]} are inner nodes, not leaves")
        extra = sorted(actual_leaves - set(leaf_ids))
        if extra:
            raise ValueError(f"hierarchy: leaves {extra[:5]} are not classes")
        if len(leaf_ids) < 2:
            raise ValueError("hierarchy: needs at least two classes")

        self._nodes = by_id
        self._order = tuple(order)
        self._parent = parent
        self._depth = depth
        self._leaf_ids = leaf_ids
        class_index = {leaf: i for i, leaf in enumerate(leaf_ids)}
        leaves_under: dict[str, tuple[int, ...]] = {}
        for node_id in reversed(order):
            node = by_id[node_id]
            if node.is_leaf:
                leaves_under[node_id] = (class_index[node_id],)
            else:
                leaves_under[node_id] = tuple(
                    sorted(i for child in node.children for i in leaves_under[child])
                )
        self._leaves_under = leaves_under
        self._all = tuple(by_id[i] for i in order)
        self._inner = tuple(n for n in self._all if not n.is_leaf)
        self._leaves = tuple(by_id[i] for i in leaf_ids)

    # ------------------------------------------------------------------ access
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names (the leaves' labels) in class order."""
        return tuple(self._nodes[i].label for i in self._leaf_ids)

    @property
    def class_ids(self) -> tuple[str, ...]:
        """Leaf node ids in class order."""
        return self._leaf_ids

    @property
    def num_classes(self) -> int:
        return len(self._leaf_ids)

    @property
    def root(self) -> Node:
        return self._nodes[self._order[0]]

    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes, root first, breadth first."""
        return self._all

    @property
    def inner_nodes(self) -> tuple[Node, ...]:
        """Inner nodes, root first, breadth first: the order the decision rules index."""
        return self._inner

    @property
    def leaves(self) -> tuple[Node, ...]:
        """Leaf nodes in class order."""
        return self._leaves

    def __getitem__(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"hierarchy has no node {node_id!r}") from None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def parent(self, node_id: str) -> Node | None:
        """The parent node, or None for the root."""
        p = self._parent.get(self[node_id].id)
        return None if p is None else self._nodes[p]

    def depth(self, node_id: str) -> int:
        """Edges from the root (the root has depth 0)."""
        return self._depth[self[node_id].id]

    @property
    def max_depth(self) -> int:
        return max(self._depth.values())

    def leaf_indices(self, node_id: str) -> tuple[int, ...]:
        """Sorted class indices of the leaves under a node (itself, for a leaf)."""
        return self._leaves_under[self[node_id].id]

    def path(self, class_index: int) -> tuple[Node, ...]:
        """Nodes from the root down to the leaf of a class, both included."""
        node_id = self._leaf_ids[class_index]
        out = [self._nodes[node_id]]
        while node_id in self._parent:
            node_id = self._parent[node_id]
            out.append(self._nodes[node_id])
        return tuple(reversed(out))

    def match_classes(self, order: Sequence[str]) -> tuple[str, ...]:
        """The leaf id of each class in ``order``, named by leaf id, WordNet id or label
        (whichever kind matches the most); a ValueError names the classes matching no leaf."""
        return tuple(_match_leaves(self._leaves, [str(c) for c in order]))

    def has_classes(self, names: Sequence[str], wnids: Sequence[str | None] = ()) -> bool:
        """Whether the leaves, in class order, are these classes: matched by WordNet id, else
        by name (or leaf id), as a class order given to :meth:`from_node_link` is."""
        for order in (wnids, names):
            if len(order) == self.num_classes and all(c is not None for c in order):
                try:
                    if self.match_classes(order) == tuple(self._leaf_ids):
                        return True
                except ValueError:
                    pass
        return False

    # ------------------------------------------------------------ value semantics
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):  # a Tree equals a Hierarchy of the same nodes
            return NotImplemented
        return self._leaf_ids == other._leaf_ids and self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash((self._leaf_ids, self.nodes))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classes={self.num_classes},"
            f" inner_nodes={len(self.inner_nodes)}, depth={self.max_depth},"
            f" root={self.root.label!r})"
        )

    def render(self, max_depth: int | None = None) -> str:
        """An indented text tree; labels shared by several nodes are told apart by their ids.
        Control and bidi characters in labels are escaped (:func:`nbdt._messages.for_terminal`)."""
        counts: dict[str, int] = {}
        for node in self._nodes.values():
            counts[node.label] = counts.get(node.label, 0) + 1
        lines: list[str] = []
        stack: list[tuple[str, int]] = [(self._order[0], 0)]
        while stack:
            node_id, level = stack.pop()
            node = self._nodes[node_id]
            text = for_terminal(node.label)
            if counts[node.label] > 1 and node.id != node.label:
                text += f" [{for_terminal(node.id)}]"
            if node.is_leaf:
                text += f"  (class {self._leaves_under[node_id][0]})"
            else:
                text += f"  ({len(self._leaves_under[node_id])} classes)"
            lines.append("  " * level + text)
            if node.children and (max_depth is None or level < max_depth):
                stack.extend((c, level + 1) for c in reversed(node.children))
        return "\n".join(lines)

    __str__ = render

    # ------------------------------------------------------------------- JSON
    def to_node_link(self) -> dict[str, Any]:
        """networkx node-link data (``"links"`` key), with the class order in ``graph``."""
        nodes = []
        for node in self.nodes:
            entry: dict[str, Any] = {"id": node.id, "label": node.label}
            if node.wnid is not None:
                entry["wnid"] = node.wnid
            if node.user_label:
                entry["user_label"] = True
            nodes.append(entry)
        links = [
            {"source": node.id, "target": child} for node in self.nodes for child in node.children
        ]
        return {
            "directed": True,
            "multigraph": False,
            "graph": {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "classes": list(self._leaf_ids),
            },
            "nodes": nodes,
            "links": links,
        }

    @classmethod
    def from_node_link(
        cls: type[TreeT], data: Mapping[str, Any], classes: Sequence[str] | None = None
    ) -> TreeT:
        """Read node-link data: ours, networkx's (``"links"`` or ``"edges"``), or the reference's.

        ``classes`` (leaf ids, WordNet ids or leaf labels, in class order) sets the class order,
        for instance a dataset's, and takes precedence over the file's own ``graph.classes``;
        without it the file's order is used. The reference implementation's files carry none.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
            raise ValueError("not node-link JSON: no 'nodes' list")
        link_key = "links" if "links" in data else "edges" if "edges" in data else None
        if link_key is None or not isinstance(data[link_key], list):
            raise ValueError("not node-link JSON: no 'links' or 'edges' list")
        children: dict[str, list[str]] = {}
        raw_nodes = []
        for entry in data["nodes"]:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), (str, int)):
                raise ValueError("node-link JSON: every node needs an 'id' (a string)")
            node_id = str(entry["id"])
            for key in ("wnid", "label", "name"):
                if entry.get(key) is not None and not isinstance(entry[key], str):
                    raise ValueError(
                        f"node-link JSON: node {node_id!r}: {key} {entry[key]!r} is not a string"
                    )
            raw_nodes.append((node_id, entry))
            children[node_id] = []
        for link in data[link_key]:
            if not isinstance(link, Mapping) or not {"source", "target"} <= link.keys():
                raise ValueError("node-link JSON: every link needs a 'source' and a 'target'")
            source, target = str(link["source"]), str(link["target"])
            if source not in children or target not in children:
                raise ValueError(f"node-link JSON: link {source!r} -> {target!r} names no node")
            children[source].append(target)
        nodes = []
        for node_id, entry in raw_nodes:
            wnid = entry.get("wnid")
            if wnid is None and is_wordnet_id(node_id):
                wnid = node_id  # the reference's files use WordNet ids as node ids
            label = entry.get("label") or entry.get("name") or node_id
            user_label = entry.get("user_label") is True
            nodes.append(Node(node_id, str(label), wnid, tuple(children[node_id]), user_label))

        graph = data.get("graph") or {}
        if not isinstance(graph, Mapping) or not isinstance(graph.get("classes") or [], list):
            raise ValueError("node-link JSON: 'graph' must be an object, its 'classes' a list")
        if graph.get("classes") is not None:
            check_unique([str(c) for c in graph["classes"]], "graph.classes")
        order = classes if classes is not None else graph.get("classes")
        if order is None:
            raise ValueError(
                "node-link JSON has no class order (graph.classes): pass classes=[...] in class"
                " order (leaf ids, WordNet ids or class names)"
            )
        return cls(nodes, _match_leaves(nodes, [str(c) for c in order]))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write node-link JSON atomically (a temporary file, then a rename)."""
        return write_text(path, json.dumps(self.to_node_link(), indent=1) + "\n")

    @classmethod
    def load(
        cls: type[TreeT], path: str | os.PathLike[str], classes: Sequence[str] | None = None
    ) -> TreeT:
        """Read a hierarchy JSON file (see :meth:`from_node_link` for ``classes``)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such hierarchy file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a JSON hierarchy file ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: not a hierarchy file (JSON nested too deeply)") from None
        try:
            return cls.from_node_link(data, classes)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` with ``label`` and ``wnid`` node attributes."""
        import networkx as nx

        return nx.node_link_graph(self.to_node_link(), edges="links")


def _match_leaves(nodes: Sequence[Node], order: Sequence[str]) -> list[str]:
    """Turn a class order given as leaf ids, WordNet ids or labels into leaf ids.

    The kind of key is the one that matches the most classes; an error names the classes it
    misses, or a label that several leaves share.
    """
    leaves = [n for n in nodes if n.is_leaf]
    best: tuple[list[str], dict[str, list[str]]] | None = None
    for key in (lambda n: n.id, lambda n: n.wnid, lambda n: n.label):
        table: dict[str, list[str]] = {}
        for n in leaves:
            if key(n) is not None:
                table.setdefault(key(n), []).append(n.id)
        missing = [c for c in order if c not in table]
        if best is None or len(missing) < len(best[0]):
            best = (missing, table)
    missing, table = best
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(order)} classes match no leaf (by id, wnid or label):"
            f" {missing[:5]}"
        )
    shared = next((c for c in order if len(table[c]) > 1), None)
    if shared is not None:
        raise ValueError(
            f"class {shared!r} names {len(table[shared])} leaves ({', '.join(table[shared])}):"
            " give the classes as leaf ids or WordNet ids"
        )
    return [table[c][0] for c in order]
