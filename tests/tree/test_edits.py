"""Hierarchy edits: each operation on hand-built trees, real WordNet names, and edit files."""

import json
import re

import pytest

from nbdt import edits
from nbdt.hierarchy import Hierarchy, Node
from nbdt.tree import Tree


def hand_tree() -> Hierarchy:
    """root(r) -> a(c0, c1), b(c2, x(c3, c4)), c5; labels given, no synsets."""
    nodes = [
        Node("r", "root", None, ("a", "b", "c5")),
        Node("a", "A", None, ("c0", "c1")),
        Node("b", "B", None, ("c2", "x")),
        Node("x", "X", None, ("c3", "c4")),
        *[Node(f"c{i}", f"class {i}") for i in range(6)],
    ]
    return Hierarchy(nodes, [f"c{i}" for i in range(6)])


def parent(h: Hierarchy, node_id: str) -> str | None:
    p = h.parent(node_id)
    return None if p is None else p.id


def test_move_reparents_contracts_and_renames_changed_nodes():
    h = hand_tree()
    moved = h.move("class 3", "a")  # by label; x is left with c4 alone and is contracted
    assert moved.class_ids == h.class_ids
    assert moved["a"].children == ("c0", "c1", "c3")
    assert "x" not in moved and moved["b"].children == ("c2", "c4")
    # a and b (and r? no: its classes are the same) changed their classes: synthetic names.
    assert moved["a"].label == "synthetic: class 0, class 1, +1 more"
    assert moved["b"].label == "synthetic: class 2, class 4"
    assert moved["r"].label == "root"
    assert edits.moved_nodes(h, moved) == {"c3", "c4"}
    assert h["a"].children == ("c0", "c1")  # the input is unchanged


def test_move_refuses_cycles_leaves_root_and_unknown_nodes():
    h = hand_tree()
    with pytest.raises(ValueError, match="cycle"):
        h.move("b", "x")
    with pytest.raises(ValueError, match="cycle"):
        h.move("b", "b")
    with pytest.raises(ValueError, match="is a class .* not an inner node"):
        h.move("a", "c5")
    with pytest.raises(ValueError, match="is the root"):
        h.move("r", "a")
    with pytest.raises(ValueError, match=r"no node 'class 9'.*did you mean"):
        h.move("class 9", "a")
    assert h.move("c0", "a") is h  # already there


def test_names_by_id_label_and_wordnet_id_and_ambiguity():
    nodes = [
        Node("r", "thing", None, ("s", "n04197391")),
        Node("s", "Shirt", "n04197391", ("c0", "c1")),
        Node("n04197391", "shirt", "n04197391"),
        Node("c0", "T-shirt"),
        Node("c1", "polo"),
    ]
    h = Hierarchy(nodes, ["n04197391", "c0", "c1"])
    assert edits.find_node(h, "s").id == "s"
    with pytest.raises(ValueError, match=r"'shirt' names 2 nodes .*name one by its id"):
        edits.find_node(h, "shirt")
    assert edits.find_node(h, "SHIRT", "leaf").id == "n04197391"
    assert edits.find_node(h, "n04197391", "inner").id == "s"
    with pytest.raises(ValueError, match="an inner node, not a class"):
        edits.find_node(h, "s", "leaf")


def test_group_and_ungroup():
    h = hand_tree()
    grouped = h.group(["c5", "a"], label="my group")
    assert grouped["r"].children == ("my group", "b")  # in the place of the first (a)
    new = grouped["my group"]
    assert new.children == ("a", "c5") and new.user_label and new.wnid is None
    assert grouped.class_ids == h.class_ids
    unnamed = h.group(["a", "c5"])
    assert unnamed["synthetic"].label == "synthetic: class 0, class 1, +1 more"
    with pytest.raises(ValueError, match="not siblings"):
        h.group(["a", "c2"])
    with pytest.raises(ValueError, match="all the children"):
        h.group(["c3", "c4"])
    with pytest.raises(ValueError, match="at least two"):
        h.group(["a"])

    flat = h.ungroup("x")
    assert flat["b"].children == ("c2", "c3", "c4") and "x" not in flat
    assert flat["b"].label == "B"  # same classes under b: its name stays
    assert edits.moved_nodes(h, flat) == {"c3", "c4"}
    with pytest.raises(ValueError, match="is the root"):
        h.ungroup("r")
    with pytest.raises(ValueError, match="not an inner node"):
        h.ungroup("c0")


def test_rename_is_kept_by_later_edits_and_survives_save_load(tmp_path):
    h = hand_tree().rename("a", "pets")
    assert h["a"].label == "pets" and h["a"].user_label
    moved = h.move("c2", "a")
    assert moved["a"].label == "pets"  # user-named: not recomputed
    path = moved.save(tmp_path / "tree.json")
    data = json.loads(path.read_text())
    assert next(n for n in data["nodes"] if n["id"] == "a")["user_label"] is True
    assert "user_label" not in next(n for n in data["nodes"] if n["id"] == "r")
    loaded = Hierarchy.load(path)
    assert loaded == moved and loaded["a"].user_label
    for entry in data["nodes"]:  # a file without the key (older files) loads as before
        entry.pop("user_label", None)
    assert not Hierarchy.from_node_link(data)["a"].user_label
    with pytest.raises(ValueError, match="empty"):
        h.rename("a", "  ")


def test_remove_class_shifts_class_order_and_contracts():
    h = hand_tree()
    smaller = h.remove_class("class 3")
    assert smaller.class_ids == ("c0", "c1", "c2", "c4", "c5")
    assert smaller["b"].children == ("c2", "c4")
    with pytest.raises(ValueError, match="not a class"):
        h.remove_class("a")
    tiny = Hierarchy([Node("r", "r", None, ("p", "q")), Node("p", "p"), Node("q", "q")], ["p", "q"])
    with pytest.raises(ValueError, match="at least two classes"):
        tiny.remove_class("p")


def test_wordnet_names_recomputed_on_fashion_mnist():
    from nbdt.pretrained import shipped_hierarchy

    h = shipped_hierarchy("fashion-mnist-wordnet")
    moved = h.move("Ankle boot", "shoe")  # footwear is left with shoe alone
    shoe = moved["n04199027"]
    assert (shoe.label, shoe.wnid) == ("footwear", "n03380867")
    assert moved.parent("n04199027").id == "n00021939"
    no_bag = h.remove_class("Bag")
    assert (no_bag.root.label, no_bag.root.wnid) == ("covering", "n03122748")
    grouped = h.group(["Trouser", "Pullover"])
    new = next(n for n in grouped.inner_nodes if n.id not in h)
    assert (new.id, new.label, new.wnid) == ("n03419014-2", "garment", "n03419014")
    named = h.rename("garment", "n03051540")  # a WordNet id names the node after the synset
    assert (named["n03419014"].label, named["n03419014"].wnid) == ("clothing", "n03051540")


EDITS = """\
# comments and blank lines are skipped

ungroup x
move "class 3" -> a   # trailing comment
group "c5", b as "big \\"group\\""
rename c0 -> "zero, # not a comment"
remove c1
"""


def test_edit_file_applies_in_order(tmp_path):
    h = hand_tree()
    parsed = edits.parse_edits(EDITS, "e.txt")
    assert [(e.operation, e.line) for e in parsed] == [
        ("ungroup", 3), ("move", 4), ("group", 5), ("rename", 6), ("remove", 7),
    ]  # fmt: skip
    assert parsed[2].arguments == (("c5", "b"), 'big "group"')
    expected = (
        h.ungroup("x")
        .move("class 3", "a")
        .group(["c5", "b"], 'big "group"')
        .rename("c0", "zero, # not a comment")
        .remove_class("c1")
    )
    path = tmp_path / "edits.txt"
    path.write_text(EDITS)
    assert h.edit(path) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("move a b", r"e.txt:1: expected move NODE -> NEW_PARENT"),
        ("\n\nshift a -> b", r"e.txt:3: unknown operation 'shift'"),
        ('rename a -> "open', r"e.txt:1: unterminated quote at column 13"),
        ("group a", r"e.txt:1: expected group NODE, NODE"),
        ("group a, b as", r"e.txt:1: expected group"),
        ("remove", r"e.txt:1: expected remove CLASS"),
    ],
)
def test_edit_file_syntax_errors_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        edits.parse_edits(text, "e.txt")


def test_edit_file_errors_of_an_edit_name_the_line(tmp_path):
    path = tmp_path / "edits.txt"
    path.write_text('ungroup x\n# fine so far\nmove "clas 3" -> a\n')
    where = re.escape(f"{path}:3: no node 'clas 3'")
    with pytest.raises(ValueError, match=rf"^{where} .*did you mean 'class 3'"):
        hand_tree().edit(path)
    with pytest.raises(FileNotFoundError, match="no such edit file"):
        hand_tree().edit(tmp_path / "missing.txt")


def test_edits_return_the_kind_of_tree_they_are_given(tmp_path):
    h = hand_tree()
    plain = Tree(h.nodes, h.class_ids)
    (tmp_path / "e.txt").write_text("ungroup x\n")
    for tree in (h, plain):
        results = [
            edits.move(tree, "c3", "a"),
            edits.group(tree, ["a", "c5"]),
            edits.ungroup(tree, "x"),
            edits.rename(tree, "x", "mine"),
            edits.remove_class(tree, "c5"),
            edits.add_leaf(tree, Node("c6", "class 6"), "a"),
            edits.apply_edits(tree, tmp_path / "e.txt"),
        ]
        assert all(type(r) is type(tree) for r in results)
        assert results[-1] == results[2]
