"""Edits of a class hierarchy: move, group, ungroup, rename, remove a class; and edit files.

Each edit returns a new validated tree of its input's kind (a :class:`~nbdt.tree.Tree`, or the
:class:`~nbdt.hierarchy.Hierarchy` whose methods call these) and leaves its input as it was.
Inner nodes whose set of leaves an edit changes get their name recomputed (the lowest common
WordNet hypernym, by the builders' own naming), unless the user named them (``Node.user_label``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdt.builders import assemble, unique_ids
from nbdt.classes import is_wordnet_id
from nbdt.tree import Node, Tree, TreeT

KINDS = ("leaf", "inner")
_FRESH = "\x00new"  # placeholder id of a node an edit creates, renamed once its label is known


# ------------------------------------------------------------------------------ naming nodes
def find_node(h: Tree, key: str, kind: str | None = None) -> Node:
    """The node that ``key`` names: a node id, else a label (any case) or a WordNet id.

    ``kind`` ("leaf" or "inner") keeps only that kind of node; among those, an exact id wins.
    No match, or several, raise a ``ValueError`` that lists the candidates.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    key = str(key)
    wanted = key.strip().casefold()
    found = [h[key]] if key in h else []
    found += [
        n
        for n in h.nodes
        if n.id != key and (n.label.casefold() == wanted or n.wnid == key.strip())
    ]
    if not found:
        close = difflib.get_close_matches(key, sorted({n.label for n in h.nodes}), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no node {key!r} (by node id, label or WordNet id){hint}")
    of_kind = [n for n in found if kind is None or (kind == "leaf") == n.is_leaf]
    if of_kind and of_kind[0].id == key:  # an exact id wins over labels and WordNet ids
        return of_kind[0]
    if not of_kind:
        what = "a class (a leaf)" if found[0].is_leaf else "an inner node"
        wanted_kind = "a class" if kind == "leaf" else "an inner node"
        raise ValueError(f"{_describe(found[0])} is {what}, not {wanted_kind}")
    if len(of_kind) > 1:
        shown = "; ".join(_describe(n) for n in of_kind[:8])
        raise ValueError(f"{key!r} names {len(of_kind)} nodes ({shown}): name one by its id")
    return of_kind[0]


def _describe(node: Node) -> str:
    kind = "class" if node.is_leaf else "inner node"
    return f"{kind} {node.label!r}" + (f" [{node.id}]" if node.id != node.label else "")


def _user_label(text: str, node: Node) -> tuple[str, str | None]:
    """The label and WordNet id a user's name gives a node: a WordNet id names its synset;
    other text drops an inner node's synset (the label no longer is its name), a class keeps its."""
    text = str(text).strip()
    if not text:
        raise ValueError("a label cannot be empty")
    if is_wordnet_id(text):
        from nbdt import wordnet

        return wordnet.label(text), text
    return text, node.wnid if node.is_leaf else None


# ------------------------------------------------------------------------------ the edits
def move(h: TreeT, node: str, new_parent: str) -> TreeT:
    """Move a node (with its subtree) to be the last child of the inner node ``new_parent``.

    The old parent, left with one child, is contracted into it. A move under the node itself or
    under one of its descendants (a cycle) is refused; a move to the current parent changes nothing.
    """
    moved, target = find_node(h, node), find_node(h, new_parent, "inner")
    if moved.id == h.root.id:
        raise ValueError(f"move: {_describe(moved)} is the root")
    ancestor: Node | None = target
    while ancestor is not None:
        if ancestor.id == moved.id:
            raise ValueError(
                f"move: {_describe(target)} lies under {_describe(moved)}: it would be a cycle"
            )
        ancestor = h.parent(ancestor.id)
    old = h.parent(moved.id)
    assert old is not None
    if old.id == target.id:
        return h
    nodes = _node_table(h)
    _set_children(nodes, old.id, [c for c in old.children if c != moved.id])
    _set_children(nodes, target.id, [*target.children, moved.id])
    return _rebuild(h, nodes, h.class_ids)


def group(h: TreeT, children: Sequence[str], label: str | None = None) -> TreeT:
    """A new inner node over some siblings, in their parent's place of the first of them.

    ``label`` names it (kept by later edits); without it the lowest common hypernym does.
    """
    if isinstance(children, str) or len(children) < 2:
        raise ValueError("group: name at least two sibling nodes")
    found = [find_node(h, c) for c in children]
    ids = [n.id for n in found]
    if len(set(ids)) != len(ids):
        raise ValueError("group: a node is named twice")
    parents = {n.id: h.parent(n.id) for n in found}
    if any(p is None for p in parents.values()):
        raise ValueError("group: the root has no siblings")
    parent_ids = {p.id for p in parents.values() if p is not None}
    if len(parent_ids) > 1:
        shown = ", ".join(f"{n.label!r} under {parents[n.id].id}" for n in found)  # type: ignore[union-attr]
        raise ValueError(f"group: the nodes are not siblings ({shown}): move them together first")
    parent = h[parent_ids.pop()]
    if len(ids) == len(parent.children):
        raise ValueError(
            f"group: these are all the children of {_describe(parent)}: nothing to group"
            " (rename it instead)"
        )
    members = [c for c in parent.children if c in ids]  # the parent's order
    new = Node(_FRESH, "", None, tuple(members))
    if label is not None:
        text, wnid = _user_label(label, new)
        new = dataclasses.replace(new, label=text, wnid=wnid, user_label=True)
    nodes = _node_table(h)
    nodes[_FRESH] = new
    at = parent.children.index(members[0])
    kept = [c for c in parent.children if c not in ids]
    _set_children(nodes, parent.id, [*kept[:at], _FRESH, *kept[at:]])
    return _rebuild(h, nodes, h.class_ids)


def ungroup(h: TreeT, node: str) -> TreeT:
    """Remove an inner node; its children take its place in its parent, in their order."""
    gone = find_node(h, node, "inner")
    parent = h.parent(gone.id)
    if parent is None:
        raise ValueError(f"ungroup: {_describe(gone)} is the root")
    nodes = _node_table(h)
    del nodes[gone.id]
    at = parent.children.index(gone.id)
    _set_children(
        nodes, parent.id, [*parent.children[:at], *gone.children, *parent.children[at + 1 :]]
    )
    return _rebuild(h, nodes, h.class_ids)


def rename(h: TreeT, node: str, label: str) -> TreeT:
    """Give a node the user's label, which later edits keep. A WordNet id as ``label`` names
    the node after that synset; other text clears an inner node's WordNet id."""
    named = find_node(h, node)
    text, wnid = _user_label(label, named)
    nodes = _node_table(h)
    nodes[named.id] = dataclasses.replace(named, label=text, wnid=wnid, user_label=True)
    return _rebuild(h, nodes, h.class_ids)


def remove_class(h: TreeT, name: str) -> TreeT:
    """Drop a class: its leaf goes, a parent left with one child is contracted, and the classes
    after it move up one index (``NBDT.with_hierarchy`` drops its row of the head to match)."""
    leaf = find_node(h, name, "leaf")
    if h.num_classes <= 2:
        raise ValueError("remove: a hierarchy needs at least two classes")
    parent = h.parent(leaf.id)
    assert parent is not None
    nodes = _node_table(h)
    del nodes[leaf.id]
    _set_children(nodes, parent.id, [c for c in parent.children if c != leaf.id])
    return _rebuild(h, nodes, [c for c in h.class_ids if c != leaf.id])


def add_leaf(h: TreeT, leaf: Node, parent: str, sibling: str | None = None) -> TreeT:
    """A new class, last in class order: a last child of the inner node ``parent``, or, with
    ``sibling``, grouped with that node under a new inner node in its place."""
    if leaf.children:
        raise ValueError("add: a class is a leaf: it has no children")
    if leaf.id in h:
        raise ValueError(f"add: node id {leaf.id!r} is taken")
    nodes = _node_table(h)
    nodes[leaf.id] = leaf
    if sibling is None:
        under = find_node(h, parent, "inner")
        _set_children(nodes, under.id, [*under.children, leaf.id])
    else:
        near = find_node(h, sibling)
        above = h.parent(near.id)
        nodes[_FRESH] = Node(_FRESH, "", None, (near.id, leaf.id))
        if above is not None:  # else the sibling is the root, and the new node becomes it
            _set_children(nodes, above.id, [_FRESH if c == near.id else c for c in above.children])
    return _rebuild(h, nodes, [*h.class_ids, leaf.id])


def moved_nodes(before: Tree, after: Tree) -> frozenset[str]:
    """Ids of the nodes of both trees whose parent differs: what a page marks as moved."""

    def parent_id(h: Tree, node_id: str) -> str | None:
        p = h.parent(node_id)
        return None if p is None else p.id

    common = {n.id for n in before.nodes} & {n.id for n in after.nodes}
    return frozenset(i for i in common if parent_id(before, i) != parent_id(after, i))


# ------------------------------------------------------------------------------ rebuilding
def _node_table(h: Tree) -> dict[str, Node]:
    return {n.id: n for n in h.nodes}


def _set_children(nodes: dict[str, Node], node_id: str, children: Sequence[str]) -> None:
    nodes[node_id] = dataclasses.replace(nodes[node_id], children=tuple(children))


def _rebuild(before: TreeT, nodes: dict[str, Node], classes: Sequence[str]) -> TreeT:
    """Contract single-child inner nodes, rename the inner nodes whose leaves changed (unless the
    user named them), give a new node an id after its name, and validate: a tree of ``before``'s
    kind (a Hierarchy stays one)."""
    class_set = set(classes)
    for node in list(nodes.values()):
        if not node.children and node.id not in class_set:
            raise ValueError(f"the edit would leave {_describe(node)} without children")
    parent = {c: n.id for n in nodes.values() for c in n.children}
    for node_id in [i for i, n in nodes.items() if len(n.children) == 1]:
        only = nodes.pop(node_id).children[0]
        if node_id in parent:
            above = parent[node_id]
            _set_children(
                nodes, above, [only if c == node_id else c for c in nodes[above].children]
            )
            parent[only] = above
        else:
            parent.pop(only, None)
    roots = [i for i in nodes if i not in parent]
    if len(roots) != 1:
        raise ValueError(f"the edit would leave {len(roots)} roots")
    root = roots[0]

    after_leaves = _leaf_sets(nodes, root)
    before_leaves = {
        n.id: frozenset(before.class_ids[i] for i in before.leaf_indices(n.id))
        for n in before.inner_nodes
    }
    stale = [
        i
        for i, n in nodes.items()
        if n.children and not n.user_label and before_leaves.get(i) != after_leaves[i]
    ]
    if stale:
        names = _lowest_common_names(nodes, classes, root)
        for i in stale:
            label, wnid = names[i]
            nodes[i] = dataclasses.replace(nodes[i], label=label, wnid=wnid)
    if _FRESH in nodes:
        taken = [i for i in nodes if i != _FRESH]
        fresh = nodes.pop(_FRESH)
        preferred = fresh.wnid or (fresh.label if fresh.user_label else "synthetic")
        new_id = unique_ids([*taken, preferred])[-1]
        nodes[new_id] = dataclasses.replace(fresh, id=new_id)
        for i, n in list(nodes.items()):
            if _FRESH in n.children:
                _set_children(nodes, i, [new_id if c == _FRESH else c for c in n.children])
    _check_one_class_per_synset(before, [nodes[c] for c in classes])
    return type(before)(nodes.values(), classes)


def _check_one_class_per_synset(before: Tree, leaves: Sequence[Node]) -> None:
    """Refuse an edit that gives a WordNet id to a second class (``rename Bag -> n03057021``
    beside Coat, an added class "coats"): two leaves would answer for one concept."""
    had = {leaf.id: leaf.wnid for leaf in before.leaves}  # a file's own repeats stay its own
    owner: dict[str, Node] = {}
    for leaf in leaves:
        if leaf.wnid is None:
            continue
        first = owner.setdefault(leaf.wnid, leaf)
        if first is not leaf and not had.get(leaf.id) == had.get(first.id) == leaf.wnid:
            raise ValueError(
                f"the edit would give {leaf.wnid} to two classes, {first.label!r} and"
                f" {leaf.label!r}: name the class after another concept"
            )


def _leaf_sets(nodes: Mapping[str, Node], root: str) -> dict[str, frozenset[str]]:
    """The leaf ids under every node, children before parents."""
    out: dict[str, frozenset[str]] = {}
    for node_id in reversed(_preorder(nodes, root)):
        kids = nodes[node_id].children
        out[node_id] = frozenset().union(*(out[c] for c in kids)) if kids else frozenset([node_id])
    return out


def _preorder(nodes: Mapping[str, Node], root: str) -> list[str]:
    order, stack = [], [root]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        stack.extend(reversed(nodes[node_id].children))
    return order


def _lowest_common_names(
    nodes: Mapping[str, Node], classes: Sequence[str], root: str
) -> dict[str, tuple[str, str | None]]:
    """Every inner node's label and WordNet id as the builders name this tree's shape."""
    inner = [i for i in reversed(_preorder(nodes, root)) if nodes[i].children]
    position = {leaf: k for k, leaf in enumerate(classes)}
    position.update((i, len(classes) + k) for k, i in enumerate(inner))
    shape = [[position[c] for c in nodes[i].children] for i in inner]
    leaves = [nodes[c] for c in classes]
    named = assemble(shape, [n.label for n in leaves], [n.wnid or n.label for n in leaves])
    out: dict[str, tuple[str, str | None]] = {}
    pairs = [(root, named.root)]
    for ours, theirs in pairs:
        if theirs.children:
            out[ours] = (theirs.label, theirs.wnid)
            pairs.extend(
                (c, named[t]) for c, t in zip(nodes[ours].children, theirs.children, strict=True)
            )
    return out


# ------------------------------------------------------------------------------ edit files
@dataclass(frozen=True)
class Edit:
    """One line of an edit file: the operation, its arguments, and where it was written."""

    operation: str
    arguments: tuple[Any, ...]
    line: int = 0
    source: str = "<edits>"

    def apply(self, h: TreeT) -> TreeT:
        """The edited hierarchy; a ``ValueError`` starts with ``source:line:``."""
        try:
            return OPERATIONS[self.operation].function(h, *self.arguments)
        except ValueError as e:
            raise ValueError(f"{self.source}:{self.line}: {e}") from None


@dataclass(frozen=True)
class _Operation:
    function: Callable[..., Tree]
    usage: str
    parse: Callable[[list[tuple[str, str]]], tuple[Any, ...] | None]


_TOKEN = re.compile(
    r'\s*(?:(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<arrow>->)|(?P<comma>,)|(?P<comment>#.*)'
    r'|(?P<word>(?:(?!->)[^\s",#])+)|(?P<bad>"))'
)
_ESCAPE = re.compile(r"\\(.)")


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs of one line: name (quoted or bare), "->", "," ; comments dropped."""
    out: list[tuple[str, str]] = []
    at = 0
    text = text.rstrip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.lastgroup == "bad":
            column = text.index('"', at) + 1
            raise ValueError(f"unterminated quote at column {column}")
        at = match.end()
        kind = match.lastgroup
        if kind == "comment":
            break
        value = match.group(kind)
        if kind == "quoted":
            out.append(("name", _ESCAPE.sub(r"\1", value[1:-1])))
        elif kind == "word":
            out.append(("name", value))
        else:
            out.append((kind, value))
    return out


def _names_only(tokens: list[tuple[str, str]], shape: tuple[str, ...]) -> tuple[str, ...] | None:
    """The names of a token list of this exact shape (kinds), or None."""
    if [k for k, _ in tokens] != list(shape):
        return None
    return tuple(v for k, v in tokens if k == "name")


def _parse_group(tokens: list[tuple[str, str]]) -> tuple[Any, ...] | None:
    label = None
    if len(tokens) >= 2 and tokens[-2] == ("name", "as") and tokens[-1][0] == "name":
        label, tokens = tokens[-1][1], tokens[:-2]
    names = tokens[::2]
    if (
        len(names) < 2
        or any(k != "name" for k, _ in names)
        or any(t[0] != "comma" for t in tokens[1::2])
    ):
        return None
    return tuple(v for _, v in names), label


_ONE = functools.partial(_names_only, shape=("name",))
_PAIR = functools.partial(_names_only, shape=("name", "arrow", "name"))
OPERATIONS: dict[str, _Operation] = {
    "move": _Operation(move, "move NODE -> NEW_PARENT", _PAIR),
    "group": _Operation(group, 'group NODE, NODE[, ...] [as "LABEL"]', _parse_group),
    "ungroup": _Operation(ungroup, "ungroup NODE", _ONE),
    "rename": _Operation(rename, 'rename NODE -> "LABEL"', _PAIR),
    "remove": _Operation(remove_class, "remove CLASS", _ONE),
}


def parse_edits(text: str, source: str = "<edits>") -> list[Edit]:
    """Parse an edit file's text (format: docs/edits.md); errors name ``source:line``."""
    edits = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            tokens = _tokens(line)
            if not tokens:
                continue
            kind, word = tokens[0]
            if kind != "name" or word not in OPERATIONS:
                raise ValueError(f"unknown operation {word!r}: use one of {', '.join(OPERATIONS)}")
            operation = OPERATIONS[word]
            arguments = operation.parse(tokens[1:])
            if arguments is None:
                raise ValueError(f"expected {operation.usage}")
        except ValueError as e:
            raise ValueError(f"{source}:{number}: {e}") from None
        edits.append(Edit(word, arguments, number, source))
    return edits


def read_edits(path: str | os.PathLike[str]) -> list[Edit]:
    """Parse an edit file; a missing or unreadable file raises naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such edit file") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ValueError(f"{path}: not a text edit file ({e})") from None
    return parse_edits(text, str(path))


def apply_edits(h: TreeT, edits: str | os.PathLike[str] | Iterable[Edit]) -> TreeT:
    """Apply an edit file (a path) or parsed edits in order; the first failing line raises."""
    if isinstance(edits, str | os.PathLike):
        edits = read_edits(edits)
    for edit in edits:
        h = edit.apply(h)
    return h
