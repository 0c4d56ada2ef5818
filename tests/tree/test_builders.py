"""Builders: WordNet trees, induced trees from weights (tensor, state dict, file, timm model),
random trees, truthful WordNet naming, the shipped hierarchies and the offline pretrained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from nbdt import builders
from nbdt import wordnet as wn
from nbdt.classes import CLASS_LISTS, dataset_classes
from nbdt.hierarchy import Hierarchy
from nbdt.pretrained import shipped_hierarchies, shipped_hierarchy

CIFAR100 = dataset_classes("cifar100")


def assert_labels_true(tree: Hierarchy) -> None:
    """Every WordNet label is a hypernym of all the node's leaves, and the lowest such one."""
    for node in tree.inner_nodes:
        if node.wnid is None:
            continue
        leaves = [tree.leaves[i].wnid for i in tree.leaf_indices(node.id)]
        common = set.intersection(*(set(wn.ancestors(w)) for w in leaves))
        assert node.wnid in common, (node, leaves)
        depth = wn.ancestors(leaves[0])
        assert depth[node.wnid] == max(depth[s] for s in common), node
        assert node.label == wn.label(node.wnid)


def sibling_set(tree: Hierarchy, *names: str) -> set[str]:
    """Class names under the lowest node holding all the given classes."""
    index = [tree.classes.index(n) for n in names]
    paths = [tree.path(i) for i in index]
    shared = [a for a, *rest in zip(*paths, strict=False) if all(a == b for b in rest)][-1]
    return {tree.classes[i] for i in tree.leaf_indices(shared.id)}


# ------------------------------------------------------------------ wordnet
def test_cifar10_wordnet_tree_groups():
    tree = builders.wordnet(dataset_classes("cifar10"))
    assert sibling_set(tree, "cat", "dog") == {"cat", "dog"}
    assert sibling_set(tree, "deer", "horse") == {"deer", "horse"}
    assert sibling_set(tree, "automobile", "truck") == {"automobile", "truck"}
    assert sibling_set(tree, "airplane", "ship") == {"airplane", "ship"}
    halves = [{tree.classes[i] for i in tree.leaf_indices(c)} for c in tree.root.children]
    animals = {"bird", "cat", "deer", "dog", "frog", "horse"}
    assert sorted(halves, key=len) == [{"airplane", "automobile", "ship", "truck"}, animals]
    assert tree[tree.parent(tree.class_ids[3]).id].label == "carnivore"
    assert_labels_true(tree)


def test_wordnet_tree_is_deterministic_and_truthful():
    first = builders.wordnet(CIFAR100)
    assert first == builders.wordnet(list(CIFAR100.names), wnids=CIFAR100.wnids)
    assert all(node.from_wordnet for node in first.inner_nodes)
    trees = {"maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"}
    assert sibling_set(first, *trees) == trees
    assert sibling_set(first, "bee", "beetle") == {"bee", "beetle", "butterfly", "cockroach"}
    assert_labels_true(first)


def test_wordnet_tree_accepts_wordnet_ids():
    ids = ["n02084071", "n02121620", "n04194289"]
    tree = builders.wordnet(ids)
    assert tree.classes == ("dog", "cat", "ship")
    assert tree.class_ids == tuple(ids)


def test_class_that_is_a_hypernym_of_another_stays_a_leaf():
    tree = builders.wordnet(["dog", "puppy", "cat"])  # dog is a hypernym of puppy
    assert [n.label for n in tree.leaves] == ["dog", "puppy", "cat"]
    assert sibling_set(tree, "dog", "puppy") == {"dog", "puppy"}
    assert tree[tree.parent(tree.class_ids[1]).id].label == "dog"


def test_unresolved_classes_hang_from_the_root_with_synthetic_names():
    with pytest.warns(wn.UnresolvedClassWarning):
        tree = builders.wordnet(["cat", "dog", "qwxzy", "blorpf"])
    assert set(tree.root.children) >= {"qwxzy", "blorpf"}
    assert tree.root.wnid is None and tree.root.label.startswith("synthetic: ")
    assert tree["qwxzy"].wnid is None


# ------------------------------------------------------------------ induced
def planted(clusters: int, size: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list]:
    """Weight rows in tight, far-apart clusters: class i belongs to cluster i % clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 10
    labels = np.arange(clusters * size) % clusters
    return centres[labels] + rng.normal(size=(len(labels), dim)) * 0.1, labels


def test_induced_recovers_planted_clusters():
    weights, labels = planted(clusters=4, size=5)
    names = list(CIFAR100.names[:20])
    tree = builders.induced(torch.tensor(weights), names, wnids=CIFAR100.wnids[:20])
    groups = {tree.leaf_indices(n.id) for n in tree.inner_nodes}
    for k in range(4):
        assert tuple(np.flatnonzero(labels == k)) in groups
    assert max(len(n.children) for n in tree.inner_nodes) == 2
    assert len(tree.inner_nodes) == 19
    assert_labels_true(tree)


def test_induced_branching_and_linkage():
    weights, labels = planted(clusters=4, size=4)
    names = list(CIFAR100.names[:16])
    clusters = {tuple(np.flatnonzero(labels == k)) for k in range(4)}
    for linkage in builders.LINKAGES:
        tree = builders.induced(
            weights, names, wnids=CIFAR100.wnids[:16], branching=4, linkage=linkage
        )
        # At most 4 children, filled from the highest merges down: here the four clusters at
        # the root, and each cluster's four classes below it.
        assert {tree.leaf_indices(c) for c in tree.root.children} == clusters, linkage
        assert [len(n.children) for n in tree.inner_nodes] == [4] * 5
        assert_labels_true(tree)


def test_normalize_clusters_by_direction():
    rng = np.random.default_rng(1)
    labels = np.arange(8) % 2  # two directions, two very different norms
    scales = np.array([1, 1, 2, 2, 30, 30, 40, 40])[:, None]
    weights = np.eye(8)[labels] * scales + rng.normal(size=(8, 8)) * 0.01
    names, ids = list(CIFAR100.names[:8]), CIFAR100.wnids[:8]
    by_direction = {(0, 2, 4, 6), (1, 3, 5, 7)}
    normalised = builders.induced(weights, names, wnids=ids, normalize=True)
    assert {normalised.leaf_indices(c) for c in normalised.root.children} == by_direction
    raw = builders.induced(weights, names, wnids=ids)
    assert {raw.leaf_indices(c) for c in raw.root.children} != by_direction


class ConvHead(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.head = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
        self.head.weight.data = weight[:, :, None, None].clone()

    def get_classifier(self) -> nn.Module:
        return self.head


class TwoHeads(nn.Module):
    def get_classifier(self):
        return nn.Linear(4, 3), nn.Linear(4, 3)


def test_weights_from_every_source(tmp_path):
    import timm

    weights = torch.tensor(planted(clusters=2, size=3, dim=6)[0], dtype=torch.float32)
    expected = weights.double().numpy()
    model = timm.create_model("resnet10t", num_classes=6, pretrained=False)
    model.get_classifier().weight.data = weights.clone()
    # The head is the state dict's last weight with as many rows as classes.
    state = {"conv.weight": torch.ones(6, 3), "fc.weight": weights, "fc.bias": torch.zeros(6)}
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": {"body.weight": torch.ones(3, 3), **state}}, path)
    sources = [weights, weights.numpy(), state, path, str(path), model, ConvHead(weights)]
    for source in sources:
        got = builders.classifier_weights(source, num_classes=6)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=type(source).__name__)
    names = list(CIFAR100.names[:6])
    trees = {builders.induced(s, names, wnids=CIFAR100.wnids[:6]) for s in sources}
    assert len(trees) == 1


def test_weight_errors(tmp_path):
    names = ["cat", "dog", "ship"]
    with pytest.raises(ValueError, match="classifier heads"):
        builders.induced(TwoHeads(), names)
    with pytest.raises(TypeError, match="no get_classifier"):
        builders.induced(nn.Linear(4, 3), names)
    with pytest.raises(ValueError, match="3 class names"):
        builders.induced(torch.randn(5, 4), names)
    with pytest.raises(ValueError, match="no classifier weight with 3 rows"):
        builders.induced({"fc.weight": torch.randn(5, 4)}, names)
    with pytest.raises(ValueError, match="NaN"):
        builders.induced(torch.full((3, 4), float("nan")), names)
    with pytest.raises(ValueError, match="shape"):
        builders.induced(torch.randn(3), names)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        builders.induced(tmp_path / "nope.pt", names)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        builders.induced(tmp_path / "junk.pt", names)
    with pytest.raises(ValueError, match="linkage"):
        builders.induced(torch.randn(3, 4), names, linkage="median")
    with pytest.raises(ValueError, match="branching"):
        builders.induced(torch.randn(3, 4), names, branching=1)
    with pytest.raises(ValueError, match="at least two classes"):
        builders.wordnet(["cat"])
    with pytest.raises(ValueError, match="2 wnids given for 3 classes"):
        builders.wordnet(names, wnids=["n02084071", "n02121620"])


# ------------------------------------------------------------------ build by name
def test_build_dispatches_by_name_and_refuses_options_the_builder_does_not_take():
    classes = ["cat", "dog", "ship", "truck"]
    weights = torch.randn(4, 6)
    assert builders.options("induced") == ("linkage", "normalize", "branching", "wnids")
    assert builders.options("wordnet") == ("wnids",)
    assert builders.options("random") == ("seed", "branching", "wnids")
    assert builders.build("random", classes, seed=2) == builders.random(classes, seed=2)
    assert builders.build("wordnet", classes) == builders.wordnet(classes)
    induced = builders.build("induced", classes, weights=weights, linkage="average")
    assert induced == builders.induced(weights, classes, linkage="average")
    with pytest.raises(ValueError, match="random does not take option 'linkage'"):
        builders.build("random", classes, linkage="ward")
    with pytest.raises(ValueError, match="wordnet does not take option 'seed'"):
        builders.build("wordnet", classes, seed=0)
    with pytest.raises(ValueError, match="unknown hierarchy builder 'kmeans'"):
        builders.build("kmeans", classes)
    with pytest.raises(ValueError, match="unknown hierarchy builder 'kmeans'"):
        builders.options("kmeans")


# ------------------------------------------------------------------ random
def test_random_is_seeded_balanced_and_named():
    classes = dataset_classes("cifar10")
    tree = builders.random(classes, seed=0, branching=3)
    assert tree == builders.random(classes, seed=0, branching=3)
    assert tree != builders.random(classes, seed=1, branching=3)
    assert max(len(n.children) for n in tree.inner_nodes) == 3
    assert tree.max_depth == 3  # ceil(log3(10))
    assert sorted(tree.leaf_indices(tree.root.id)) == list(range(10))
    binary = builders.random(classes, seed=0)
    assert all(len(n.children) == 2 for n in binary.inner_nodes)
    assert_labels_true(tree)


def test_shared_labels_keep_unique_ids():
    tree = builders.random(dataset_classes("cifar10"), seed=0)
    labels = [n.label for n in tree.inner_nodes]
    assert len(set(labels)) < len(labels)  # random groups share general names like "whole"
    assert len({n.id for n in tree.nodes}) == len(tree.nodes)
    repeated = next(label for label in labels if labels.count(label) > 1)
    ids = [n.id for n in tree.inner_nodes if n.label == repeated]
    wnid = tree[ids[0]].wnid
    assert ids[0] == wnid and ids[1] == f"{wnid}-2"
    assert f"{repeated} [{ids[1]}]" in tree.render()


def test_synthetic_names_where_leaves_lack_synsets():
    with pytest.warns(wn.UnresolvedClassWarning):
        tree = builders.random(["qwxzy", "blorpf", "zzkrt", "cat"], seed=0)
    for node in tree.inner_nodes:
        leaves = [tree.classes[i] for i in tree.leaf_indices(node.id)]
        if leaves == ["cat"] or node.wnid is not None:
            assert set(leaves) == {"cat"}
        else:
            assert node.label.startswith("synthetic: ") and not node.from_wordnet
            assert leaves[0] in node.label
    assert len({n.id for n in tree.nodes}) == len(tree.nodes)


# ------------------------------------------------------------------ shipped + pretrained
@pytest.mark.parametrize("dataset", CLASS_LISTS)
def test_shipped_wordnet_hierarchies(dataset):
    tree = shipped_hierarchy(f"{dataset}-wordnet")
    classes = dataset_classes(dataset)
    assert tree.classes == classes.names
    assert tuple(leaf.wnid for leaf in tree.leaves) == classes.wnids
    assert all(node.from_wordnet for node in tree.inner_nodes)
    assert tree == builders.wordnet(classes)  # scripts/make_hierarchies.py is up to date


def test_shipped_imagenet_induced_every_name_true():
    assert "imagenet-induced" in shipped_hierarchies()
    tree = shipped_hierarchy("imagenet-induced.json")
    assert tree.num_classes == 1000 and len(tree.inner_nodes) == 999
    assert all(node.from_wordnet for node in tree.inner_nodes)
    assert_labels_true(tree)
    siamese = tree.classes.index("Siamese cat")
    assert "domestic cat" in [node.label for node in tree.path(siamese)]
    with pytest.raises(ValueError, match="no shipped hierarchy 'nope'; available: cifar10-"):
        shipped_hierarchy("nope")


def test_offline_efficientnet_lite0_sees_a_cat():
    import timm
    from PIL import Image
    from skimage.data import chelsea

    from nbdt.pretrained import efficientnet_lite0

    model = efficientnet_lite0()
    assert not model.training and model.num_classes == 1000
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        probs = model(transform(Image.fromarray(chelsea())).unsqueeze(0)).softmax(-1)[0]
    top = int(probs.argmax())
    cats = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert dataset_classes("imagenet").names[top] in cats
    assert float(probs[281:286].sum()) > 0.8
    tree = builders.induced(model, dataset_classes("imagenet"))
    assert tree == shipped_hierarchy("imagenet-induced")


def test_induced_refuses_an_nbdt_model_file_of_other_classes(tmp_path):
    import timm

    import nbdt
    from nbdt.hierarchy import Hierarchy, Node

    names = ["cat", "dog", "ship"]
    tree = Hierarchy(
        [Node("r", "r", None, ("x", "ship")), Node("x", "x", None, ("cat", "dog"))]
        + [Node(n, n) for n in names],
        names,
    )
    path = nbdt.NBDT(timm.create_model("test_resnet", num_classes=3), tree).save(tmp_path / "m.pt")
    assert builders.induced(path, names).classes == tuple(names)
    with pytest.raises(ValueError, match=r"m\.pt: an nbdt model of 3 other classes \(cat, dog"):
        builders.induced(path, ["airplane", "car", "truck"])
