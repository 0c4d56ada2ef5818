"""The Hierarchy value: structure, validation errors, JSON (ours and the reference's), rendering."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from nbdt import builders
from nbdt.classes import is_wordnet_id
from nbdt.hierarchy import Hierarchy, Node
from nbdt.tree import Tree

# A small tree:        root
#                    /      \
#                animal    vehicle
#                /   \      /   \
#              cat   dog  car  ship        (class order: dog, cat, ship, car)
NODES = [
    Node("root", "whole", "n00003553", ("animal", "vehicle")),
    Node("animal", "animal", "n00015388", ("cat", "dog")),
    Node("vehicle", "vehicle", "n04524313", ("car", "ship")),
    Node("cat", "cat", "n02121620"),
    Node("dog", "dog", "n02084071"),
    Node("car", "car", "n02958343"),
    Node("ship", "ship", "n04194289"),
]
CLASSES = ["dog", "cat", "ship", "car"]


@pytest.fixture
def tree() -> Hierarchy:
    return Hierarchy(NODES, CLASSES)


def test_structure(tree):
    assert tree.classes == ("dog", "cat", "ship", "car")
    assert tree.root.id == "root"
    assert [n.id for n in tree.nodes] == ["root", "animal", "vehicle", "cat", "dog", "car", "ship"]
    assert [n.id for n in tree.inner_nodes] == ["root", "animal", "vehicle"]
    assert [n.id for n in tree.leaves] == CLASSES
    assert tree.leaf_indices("animal") == (0, 1)
    assert tree.leaf_indices("vehicle") == (2, 3)
    assert tree.leaf_indices("car") == (3,)
    assert [n.id for n in tree.path(2)] == ["root", "vehicle", "ship"]
    assert tree.parent("cat").id == "animal" and tree.parent("root") is None
    assert tree.depth("root") == 0 and tree.depth("dog") == 2 and tree.max_depth == 2
    assert tree["dog"].from_wordnet and is_wordnet_id("n02084071")
    assert not is_wordnet_id("synthetic:x") and not is_wordnet_id(None)


def test_json_round_trip(tree, tmp_path):
    path = tree.save(tmp_path / "tree.json")
    again = Hierarchy.load(path)
    assert again == tree and hash(again) == hash(tree)
    assert again.classes == tree.classes
    data = json.loads(path.read_text())
    assert data["graph"]["classes"] == CLASSES
    assert {"source": "root", "target": "animal"} in data["links"]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


def test_edges_key_is_read_too(tree):
    data = tree.to_node_link()
    data["edges"] = data.pop("links")
    assert Hierarchy.from_node_link(data) == tree


def test_networkx_export(tree):
    graph = tree.to_networkx()
    assert graph.number_of_nodes() == 7 and graph.number_of_edges() == 6
    assert graph.nodes["animal"]["label"] == "animal"


def test_reference_format_loads(tmp_path):
    """The reference implementation's files: node-link with "links", WordNet ids as node ids,
    "label" attributes and no class order in the file."""
    reference = {
        "directed": True,
        "multigraph": False,
        "graph": {},
        "nodes": [
            {"id": "n00003553", "label": "whole"},
            {"id": "n00015388", "label": "animal"},
            {"id": "n04524313", "label": "vehicle"},
            {"id": "n02121620", "label": "cat"},
            {"id": "n02084071", "label": "dog"},
            {"id": "n02958343", "label": "car"},
            {"id": "n04194289", "label": "ship"},
        ],
        "links": [
            {"source": "n00003553", "target": "n00015388"},
            {"source": "n00003553", "target": "n04524313"},
            {"source": "n00015388", "target": "n02121620"},
            {"source": "n00015388", "target": "n02084071"},
            {"source": "n04524313", "target": "n02958343"},
            {"source": "n04524313", "target": "n04194289"},
        ],
    }
    path = tmp_path / "graph-induced-wrn28_10_cifar10.json"
    path.write_text(json.dumps(reference))
    with pytest.raises(ValueError, match="no class order"):
        Hierarchy.load(path)
    by_label = Hierarchy.load(path, classes=["dog", "cat", "ship", "car"])
    by_wnid = Hierarchy.load(path, classes=["n02084071", "n02121620", "n04194289", "n02958343"])
    assert by_label == by_wnid
    assert by_label.classes == ("dog", "cat", "ship", "car")
    assert by_label.root.wnid == "n00003553" and by_label.root.label == "whole"
    assert by_label.leaf_indices("n00015388") == (0, 1)


def test_render_tells_shared_labels_apart():
    nodes = [
        Node("r", "animal", None, ("a", "b")),
        Node("a", "animal", None, ("x", "y")),
        Node("b", "plant", None, ("z", "w")),
        *(Node(leaf, leaf) for leaf in "xyzw"),
    ]
    text = Hierarchy(nodes, list("xyzw")).render()
    assert text.splitlines()[:2] == ["animal [r]  (4 classes)", "  animal [a]  (2 classes)"]
    assert "    x  (class 0)" in text.splitlines()
    assert "plant  (2 classes)" in text  # unique labels carry no id


def _leaves(*ids):
    return [Node(i, i) for i in ids]


@pytest.mark.parametrize(
    "nodes, classes, message",
    [
        ([], [], "no nodes"),
        (
            [Node("r", "r", None, ("a", "b")), *_leaves("a", "b", "a")],
            ["a", "b"],
            "duplicate node id 'a'",
        ),
        (
            [Node("r", "r", None, ("a",)), *_leaves("a")],
            ["a"],
            "single child",
        ),
        (
            [Node("r", "r", None, ("a", "a")), *_leaves("a")],
            ["a"],
            "lists a child twice",
        ),
        (
            [Node("r", "r", None, ("a", "zz")), *_leaves("a")],
            ["a"],
            "unknown child 'zz'",
        ),
        (
            [
                Node("r", "r", None, ("p", "q")),
                Node("p", "p", None, ("a", "b")),
                Node("q", "q", None, ("b", "c")),
                *_leaves("a", "b", "c"),
            ],
            ["a", "b", "c"],
            "two parents",
        ),
        (
            [Node("r", "r", None, ("a", "b")), Node("s", "s", None, ("c", "d")), *_leaves(*"abcd")],
            list("abcd"),
            "2 roots",
        ),
        (
            [
                Node("p", "p", None, ("q", "a")),
                Node("q", "q", None, ("p", "b")),
                *_leaves("a", "b"),
            ],
            ["a", "b"],
            "no root",
        ),
        (
            [
                Node("r", "r", None, ("a", "b")),
                Node("p", "p", None, ("q", "c")),
                Node("q", "q", None, ("p", "d")),
                *_leaves(*"abcd"),
            ],
            list("abcd"),
            "not reachable from the root",
        ),
        (
            [Node("r", "r", None, ("a", "b")), *_leaves("a", "b")],
            ["a", "b", "a"],
            "listed twice",
        ),
        (
            [Node("r", "r", None, ("a", "b")), *_leaves("a", "b")],
            ["a", "b", "c"],
            "not nodes of the tree",
        ),
        (
            [Node("r", "r", None, ("a", "b")), *_leaves("a", "b")],
            ["a", "r"],
            "inner nodes, not leaves",
        ),
        (
            [Node("r", "r", None, ("a", "b")), *_leaves("a", "b")],
            ["a"],
            "leaves ['b'] are not classes",
        ),
    ],
)
def test_validation_errors(nodes, classes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        Hierarchy(nodes, classes)
    assert "\n" not in str(error.value)


def test_non_node_is_a_type_error():
    with pytest.raises(TypeError, match="must be Node"):
        Hierarchy([("r", "r")], ["r"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Hierarchy.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON hierarchy file"):
        Hierarchy.load(bad)
    nolinks = tmp_path / "nolinks.json"
    nolinks.write_text(json.dumps({"nodes": []}))
    with pytest.raises(ValueError, match="nolinks.json: .*no 'links' or 'edges'"):
        Hierarchy.load(nolinks)


def test_load_hierarchy_takes_a_file_or_a_shipped_name(tree, tmp_path):
    from nbdt.pretrained import load_hierarchy, shipped_hierarchy

    shipped = load_hierarchy("cifar10-wordnet")
    assert load_hierarchy("cifar10-wordnet.json") == shipped
    assert shipped == shipped_hierarchy("cifar10-wordnet")
    assert shipped.classes[3] == "cat"
    reordered = load_hierarchy("cifar10-wordnet", classes=list(reversed(shipped.class_ids)))
    assert reordered.classes == tuple(reversed(shipped.classes))
    path = tree.save(tmp_path / "cifar10-wordnet")  # a file wins over a shipped name
    assert load_hierarchy(path) == tree
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such hierarchy file or shipped"):
        load_hierarchy(tmp_path / "nope.json")


def test_class_order_errors_name_the_classes_at_fault():
    nodes = [
        Node("r", "entity", None, ("n01", "n02", "n03")),
        Node("n01", "crane", "n02012849"),  # the bird
        Node("n02", "crane", "n03126707"),  # the machine
        Node("n03", "cat", "n02121808"),
    ]
    data = Hierarchy(nodes, ["n01", "n02", "n03"]).to_node_link()
    by_wnid = Hierarchy.from_node_link(data, classes=["n03126707", "n02121808", "n02012849"])
    assert by_wnid.class_ids == ("n02", "n03", "n01")
    with pytest.raises(ValueError, match=r"1 of 3 classes match no leaf .*\['dgo'\]"):
        Hierarchy.from_node_link(data, classes=["crane", "dgo", "cat"])
    with pytest.raises(ValueError, match=r"class 'crane' names 2 leaves \(n01, n02\): give"):
        Hierarchy.from_node_link(data, classes=["crane", "crane", "cat"])


def test_save_into_a_missing_folder_names_it_and_leaves_nothing(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tree\.json: the folder .*nope does not exist"):
        tree.save(tmp_path / "nope" / "tree.json")
    target = tmp_path / "tree.json"
    target.mkdir()  # the rename fails: the temporary file must not stay behind
    with pytest.raises(OSError):
        tree.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.json"]


# ------------------------------------------------------------------ Tree and Hierarchy
def test_a_tree_equals_the_hierarchy_of_its_nodes(tree, tmp_path):
    plain = Tree(NODES, CLASSES)
    assert plain == tree and hash(plain) == hash(tree) and len({plain, tree}) == 1
    assert repr(plain).startswith("Tree(") and repr(tree).startswith("Hierarchy(")
    assert type(Hierarchy.of(plain)) is Hierarchy and Hierarchy.of(tree) is tree
    plain.save(tmp_path / "tree.json")
    assert type(Hierarchy.load(tmp_path / "tree.json")) is Hierarchy
    assert type(Tree.load(tmp_path / "tree.json")) is Tree
    assert type(Hierarchy.from_node_link(tree.to_node_link())) is Hierarchy
    again = pickle.loads(pickle.dumps(tree))
    assert type(again) is Hierarchy and again == tree


def test_every_convenience_method_returns_a_hierarchy(tmp_path):
    classes = ["cat", "dog", "ship", "truck"]
    built = [
        Hierarchy.induced(torch.randn(4, 6), classes),
        Hierarchy.wordnet(classes),
        Hierarchy.random(classes, seed=1),
        Hierarchy.build("random", classes, seed=1, branching=3),
        Hierarchy.build("induced", classes, weights=torch.randn(4, 6), linkage="average"),
    ]
    assert built[2] == builders.random(classes, seed=1)
    h = built[3]  # root: an inner node over two classes, and the two other classes
    inner = h.inner_nodes[1].id
    leaf = h[inner].children[0]
    top = [c for c in h.root.children if c != inner]
    (tmp_path / "edits.txt").write_text(f"rename {inner} -> mine\n")
    edited = [
        h.move(top[0], inner),
        h.group(top),
        h.ungroup(inner),
        h.rename(inner, "mine"),
        h.remove_class(leaf),
        h.edit(tmp_path / "edits.txt"),
    ]
    assert edited[-1] == edited[3] and len(set(edited)) == len(edited) - 1
    assert all(type(t) is Hierarchy for t in built + edited)
