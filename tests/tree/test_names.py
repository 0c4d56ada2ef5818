"""Display names (nbdt.labels): the concept that best fits a node's classes, never the parent's
name again, stated exceptions, class lists, user names first; stored in node-link JSON; one
rendering of a decision path for terminal, JSON and HTML."""

from __future__ import annotations

import json
import re
import statistics

import pytest
import torch

from nbdt import builders
from nbdt.classes import dataset_classes
from nbdt.cli.hierarchy import main as hierarchy_main
from nbdt.cli.train import parser as train_parser
from nbdt.explanation import format_probability
from nbdt.hierarchy import Hierarchy
from nbdt.labels import display_names, name_nodes, named
from nbdt.pretrained import shipped_hierarchy
from nbdt.training.config import TrainConfig
from nbdt.tree import Tree
from nbdt.visualize import explanation_html

from helpers.patch_models import patch_model

FM = dataset_classes("fashion-mnist")
# Class indices: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
# 7 Sneaker, 8 Bag, 9 Ankle boot. Inner node k of a shape is 10 + k.


def fm_tree(shape: list[list[int]]) -> Tree:
    return builders.assemble(shape, list(FM), FM.wnids)


def names_of(tree: Tree) -> dict[frozenset[str], str]:
    shown = display_names(tree)
    return {
        frozenset(tree.classes[i] for i in tree.leaf_indices(n.id)): shown[n.id]
        for n in tree.inner_nodes
    }


def test_exact_concept_names_the_node_and_two_classes_read_a_or_b():
    # footwear = {Sandal, Sneaker, Ankle boot}; {Bag, Ankle boot} has no concept of its own
    tree = fm_tree([[5, 7], [8, 9], [0, 2, 3, 4, 6], [10, 11, 1, 12]])
    shown = names_of(tree)
    assert shown[frozenset({"Sandal", "Sneaker"})] == "shoe"
    assert shown[frozenset({"Bag", "Ankle boot"})] == "Bag or Ankle boot"
    exact = fm_tree([[5, 7], [10, 9], [0, 1, 2, 3, 4, 6, 8, 11]])
    assert names_of(exact)[frozenset({"Sandal", "Sneaker", "Ankle boot"})] == "footwear"


def test_exceptions_are_stated_when_the_concept_is_not_exact():
    # four of the six garments: "clothing (4 of 6)", fit F1 = 2 * 4 / (4 + 6)
    tree = fm_tree([[0, 2, 3, 4], [10, 1, 5, 6, 7, 8, 9]])
    node = next(n for n in tree.inner_nodes if n.id != tree.root.id)
    assert (node.display, node.fit) == ("clothing (4 of 6)", pytest.approx(0.8))
    # footwear and one more concept, and a class under neither named after "+"
    tree = fm_tree([[5, 7, 9, 8, 1], [10, 0, 2, 3, 4, 6]])
    node = next(n for n in tree.inner_nodes if n.id != tree.root.id)
    assert re.fullmatch(r"footwear or \w+ \+ (Bag|Trouser)", node.display), node.display
    assert node.fit == pytest.approx(2 * 4 / (5 + 4))


def test_no_inner_name_repeats_its_parent_and_the_lowest_common_hypernym_stays():
    tree = fm_tree([[5, 7], [10, 9], [0, 2], [12, 3], [13, 4], [14, 6], [11, 15, 1, 8]])
    shown = display_names(tree)
    for node in tree.inner_nodes:
        parent = tree.parent(node.id)
        if parent is not None:
            assert shown[node.id] != shown[parent.id]
    # labels and wnids are still what WordNet says: the lowest common hypernym
    assert tree.root.label == "artifact" and tree.root.wnid == "n00021939"
    data = tree.to_node_link()
    assert {"display", "fit"} <= set(data["nodes"][0])
    assert Tree.from_node_link(data).nodes[0].display == data["nodes"][0]["display"]


def test_the_parents_concept_is_never_taken_again():
    # root's best concept is its own lowest common hypernym; a child that is nearly all of it
    # must take another name
    tree = fm_tree([[0, 1, 2, 3, 4, 6, 8, 5, 7], [10, 9]])
    shown = display_names(tree)
    child = next(n for n in tree.inner_nodes if n.id != tree.root.id)
    assert shown[child.id] != shown[tree.root.id]
    assert not shown[child.id].startswith(shown[tree.root.id] + " ")


def test_user_names_win_and_a_repeated_given_name_lists_its_classes():
    tree = Hierarchy.of(fm_tree([[5, 7], [10, 9], [0, 1, 2, 3, 4, 6, 8, 11]]))
    renamed = tree.rename("footwear", "things for feet")
    node = next(n for n in renamed.inner_nodes if n.user_label)
    assert display_names(renamed)[node.id] == "things for feet"
    assert node.display == "things for feet"  # edits store the names too


def test_files_without_names_load_and_are_named_the_same():
    tree = fm_tree([[5, 7], [8, 9], [0, 2, 3, 4, 6], [10, 11, 1, 12]])
    data = tree.to_node_link()
    for entry in data["nodes"]:
        entry.pop("display", None)
        entry.pop("fit", None)
    bare = Tree.from_node_link(data)
    assert all(n.display is None for n in bare.inner_nodes)
    assert bare == tree  # names take no part in equality
    assert display_names(bare) == display_names(tree)
    assert named(bare).to_node_link() == tree.to_node_link()


@pytest.mark.parametrize(
    ("entry", "message"),
    [({"display": 3}, "display that is not text"), ({"fit": 1.5}, "fit outside")],
)
def test_bad_display_fields_are_one_clear_error(entry, message):
    data = fm_tree([[5, 7], [10, 0, 1, 2, 3, 4, 6, 8, 9]]).to_node_link()
    data["nodes"][0].update(entry)
    with pytest.raises(ValueError, match=message):
        Tree.from_node_link(data)


def test_shipped_imagenet_induced_names_fit_and_never_repeat_the_parent():
    tree = shipped_hierarchy("imagenet-induced")
    shown = name_nodes(tree)
    inner = tree.inner_nodes
    repeats = [n for n in inner[1:] if shown[n.id][0] == shown[tree.parent(n.id).id][0]]
    assert repeats == []
    assert statistics.mean(shown[n.id][1] for n in inner) >= 0.8  # 0.27 for the labels


def test_name_command_names_a_reference_file(tmp_path, capsys):
    data = shipped_hierarchy("fashion-mnist-wordnet").to_node_link()
    for entry in data["nodes"]:  # the reference implementation's files: ids only, no names
        entry.pop("label", None)
        entry.pop("display", None)
    (tmp_path / "ref.json").write_text(json.dumps(data))
    out = tmp_path / "named.json"
    assert hierarchy_main(["name", str(tmp_path / "ref.json"), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err.startswith(f"nbdt-hierarchy: wrote {out}: 6 inner nodes")
    named_tree = Tree.load(out)
    assert named_tree.root.display == "artifact"
    assert all(n.display for n in named_tree.inner_nodes)
    leaves = {n.display for n in named_tree.leaves}
    assert "sandal" in leaves and not any(d.startswith("n0") for d in leaves)  # not their ids
    assert (
        hierarchy_main(["name", str(tmp_path / "none.json"), "-o", str(tmp_path / "x.json")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("nbdt-hierarchy: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- WordNet-aware induced trees
def _garbled_weights() -> torch.Tensor:
    """Weights that group Ankle boot with Bag and the tops with the shoes: against WordNet."""
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    group = [0, 1, 2, 1, 0, 2, 0, 2, 3, 3]  # T-shirt+Coat+Shirt, Trouser+Pullover, shoes, Bag+boot
    return centres[group] + 0.1 * torch.randn(10, 16)


def _groups(tree: Tree) -> set[frozenset[str]]:
    return {frozenset(tree.classes[i] for i in tree.leaf_indices(n.id)) for n in tree.inner_nodes}


def test_wordnet_weight_blends_from_the_weights_alone_to_wordnets_grouping():
    weights = _garbled_weights()
    plain = builders.induced(weights, FM)
    assert builders.induced(weights, FM, wordnet_weight=0.0) == plain  # 0: today's tree
    assert frozenset({"Bag", "Ankle boot"}) in _groups(plain)
    wordnet_like = builders.induced(weights, FM, wordnet_weight=1.0)
    assert frozenset({"Sandal", "Sneaker", "Ankle boot"}) in _groups(wordnet_like)
    assert frozenset({"Bag", "Ankle boot"}) not in _groups(wordnet_like)
    with pytest.raises(ValueError, match="wordnet_weight must be a number from 0 to 1"):
        builders.induced(weights, FM, wordnet_weight=1.5)


def test_wordnet_weight_is_a_flag_of_nbdt_hierarchy_and_nbdt_train(tmp_path, capsys):
    path = tmp_path / "head.pt"
    torch.save({"fc.weight": _garbled_weights()}, path)
    out = tmp_path / "tree.json"
    argv = ["induced", "--dataset", "fashion-mnist", "--checkpoint", str(path), "-o", str(out)]
    assert hierarchy_main([*argv, "--wordnet-weight", "1", "--quiet"]) == 0
    assert frozenset({"Sandal", "Sneaker", "Ankle boot"}) in _groups(Tree.load(out))
    assert hierarchy_main([*argv, "--wordnet-weight", "2"]) == 2
    assert "wordnet_weight must be a number from 0 to 1" in capsys.readouterr().err
    assert train_parser().parse_args(["-o", "x", "--wordnet-weight", "0.5"]).wordnet_weight == 0.5
    with pytest.raises(ValueError, match="--wordnet-weight must be from 0 to 1"):
        TrainConfig(output=str(tmp_path / "run"), wordnet_weight=-1.0, report=False).validate()


# --------------------------------------------------------- one rendering of a decision path
def test_terminal_json_and_page_show_the_same_decisions_with_the_same_numbers(tmp_path):
    model = patch_model()
    model.model.fc.weight.data[3] = torch.tensor([0.0, 6.0])  # path root -> b -> bb -> c3
    batch = torch.zeros(1, 1, 16, 24)
    batch[0, :, 8:14, 2:5] = -30.0
    (exp,) = model.explain(batch)
    record = exp.to_dict()
    shown = [
        f"{step['child_display']} ({format_probability(step['probability'])})"
        for step in record["path"]
    ]
    assert str(exp) == f"Prediction: {exp.label} // Decisions: {' -> '.join(shown)}"
    assert len(shown) == len(exp.path) == 3  # nothing merged, as on the page
    page = explanation_html([exp], [None], tmp_path / "e.html", hierarchy=model.hierarchy)
    embedded = re.search(r'<script[^>]*id="nbdt-data"[^>]*>(.*?)</script>', page.read_text(), re.S)
    assert json.loads(embedded.group(1))["items"][0]["explanation"]["path"] == record["path"]
