"""Evidence: per-decision heatmaps, node examples and their file, label disambiguation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbdt.evidence.examples import KINDS, NodeExamples, merge_examples, node_examples
from nbdt.evidence.faithfulness import deletion_test
from nbdt.evidence.saliency import decision_margins, decision_saliency, find_layer
from nbdt.heads import logits_and_features, model_input
from nbdt.hierarchy import Hierarchy, Node
from nbdt.labels import distinct_label, repeats_ancestor
from nbdt.model import NBDT

from helpers.patch_models import (
    PATCH_CLASSES,
    FlatNet,
    PatchNet,
    patch_images,
    patch_model,
    patch_tree,
)

pytest.importorskip("pytorch_grad_cam")


# ------------------------------------------------------------------------------ saliency
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_heatmap_mass_lies_in_the_region_that_decides(method):
    model = patch_model()
    batch = torch.zeros(2, 1, 16, 24)
    batch[0, :, 2:6, 14:22] = 1.0  # a wide patch in the top right: channel 0 -> child "a"
    batch[1, :, 9:15, 1:5] = -1.0  # a tall patch bottom left: channel 1 -> child "b"
    maps = decision_saliency(model, batch, method=method)
    explanations = model.explain(batch)
    assert [len(m) for m in maps] == [len(e.path) for e in explanations]
    assert explanations[0].path[0].child_id == "a" and explanations[1].path[0].child_id == "b"
    regions = [(slice(2, 6), slice(14, 22)), (slice(9, 15), slice(1, 5))]
    for image_maps, (rows, cols) in zip(maps, regions, strict=True):
        for heat in image_maps:
            assert heat.shape == (16, 24) and heat.dtype == np.float32
            assert 0 <= heat.min() and heat.max() <= 1 and heat.max() > 0.99
            inside = np.zeros_like(heat, dtype=bool)
            inside[rows, cols] = True
            # bilinear upsampling of the 1-pixel-per-pixel map leaks nothing far away
            grown = np.zeros_like(inside)
            grown[
                max(rows.start - 1, 0) : rows.stop + 1, max(cols.start - 1, 0) : cols.stop + 1
            ] = 1
            assert heat[grown].sum() / heat.sum() > 0.97


def test_saliency_of_given_explanations_equals_own_path_and_leaves_model_alone():
    model = patch_model()
    model.model.fc.weight.grad = torch.ones_like(model.model.fc.weight)
    batch = torch.randn(3, 1, 16, 24)
    own = decision_saliency(model, batch)
    given = decision_saliency(model, batch, model.explain(batch))
    for a, b in zip(own, given, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6)
    assert torch.equal(model.model.fc.weight.grad, torch.ones_like(model.model.fc.weight))
    assert all(p.requires_grad for p in model.parameters())


def test_margins_are_the_rule_score_differences():
    model = patch_model()
    batch = torch.randn(4, 1, 16, 24)
    explanations = model.explain(batch)
    margins = decision_margins(model, batch, explanations)
    logits = model.logits(batch)
    inner = [n.id for n in model.hierarchy.inner_nodes]
    for b, exp in enumerate(explanations):
        for d, step in enumerate(exp.path):
            node = model.hierarchy[step.node_id]

            def score(child, b=b):
                return logits[b, list(model.hierarchy.leaf_indices(child))].mean()

            expected = score(step.child_id) - score(step.runner_up_id)
            assert inner.index(step.node_id) >= 0 and step.child_id in node.children
            assert margins[b, d].item() == pytest.approx(expected.item(), abs=1e-5)
        assert torch.isnan(margins[b, len(exp.path) :]).all()


def test_layer_choice_and_bad_layers():
    model = patch_model()
    assert find_layer(model)[0] == "conv"  # forward_features ends with F.relu: same shape
    assert find_layer(model, "conv")[1] is model.model.conv
    assert find_layer(model, model.model.conv)[0] == "conv"
    with pytest.raises(ValueError, match="layer='conv9'"):
        decision_saliency(model, torch.zeros(1, 1, 16, 24), layer="conv9")
    with pytest.raises(ValueError, match="not part of"):
        find_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="layer=NAME"):
        decision_saliency(patch_model(FlatNet()), torch.zeros(1, 1, 16, 24))
    with pytest.raises(ValueError, match="method must be one of"):
        decision_saliency(model, torch.zeros(1, 1, 16, 24), method="scorecam")


# ------------------------------------------------------------------------- node examples
def _reference(model, data, k):
    """A plain loop: every (node, child, kind) list sorted by (-probability, index)."""
    probs = model.rules.node_log_probs(model.logits(model_input(model, data.images)))
    inner = model.hierarchy.inner_nodes
    out = {}
    for i, node in enumerate(inner):
        for slot, child in enumerate(node.children):
            for kind in KINDS:
                rows = []
                for j, label in enumerate(data.labels.tolist()):
                    leaves = model.hierarchy.leaf_indices
                    if label not in leaves(node.id):
                        continue
                    under = label in leaves(child)
                    if under == (kind == "representative"):
                        rows.append((-probs[j, i, slot].exp().item(), j))
                out[node.id, child, kind] = [j for _, j in sorted(rows)[:k]]
    return out


def _same(a: NodeExamples, b: NodeExamples) -> None:
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.klass, b.klass)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.sample_index, b.sample_index)
    np.testing.assert_array_equal(a.sample_route, b.sample_route)
    np.testing.assert_array_equal(a.sample_features, b.sample_features)
    assert dict(a.thumbnails) == dict(b.thumbnails)


def test_node_examples_match_a_plain_loop_and_lie_under_the_right_child():
    model, data = patch_model(PatchNet(seed=3)), patch_images()
    model.model.fc.weight.data += torch.randn(5, 2)  # less regular scores
    found = node_examples(model, data, k=4, sample=50, batch_size=16)
    expected = _reference(model, data, 4)
    h = model.hierarchy
    for node in h.inner_nodes:
        for child in node.children:
            for kind in KINDS:
                got = found.examples(node.id, child, kind)
                assert [e.index for e in got] == expected[node.id, child, kind]
                for e in got:
                    assert e.class_index == data.labels[e.index].item()
                    assert e.thumbnail.startswith(b"\x89PNG")
                    under = e.class_index in h.leaf_indices(child)
                    assert under == (kind == "representative")
                    assert e.class_index in h.leaf_indices(node.id)
    assert len(found.sample_index) == 50 and found.sample_features.shape == (50, 2)


def test_node_examples_depend_on_no_batch_order_and_merge_like_one_pass(tmp_path):
    model, data = patch_model(PatchNet(seed=3)), patch_images()
    whole = node_examples(model, data, k=3, sample=20, batch_size=10)
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    batches = [
        (
            data.images[order[s : s + 10]],
            data.labels[order[s : s + 10]],
            torch.tensor(order[s : s + 10]),
        )
        for s in range(0, len(order), 10)
    ]
    _same(whole, node_examples(model, batches, k=3, sample=20))
    halves = [
        node_examples(model, batches[:4], k=3, sample=20),
        node_examples(model, batches[4:], k=3, sample=20),
    ]
    _same(whole, merge_examples(model, halves))
    path = whole.save(tmp_path / "examples.npz")
    loaded = NodeExamples.load(path, hierarchy=model.hierarchy)
    _same(whole, loaded)
    assert loaded.hierarchy == model.hierarchy


def test_nearest_examples_are_exact_and_routed_to_the_child():
    model, data = patch_model(PatchNet(seed=3)), patch_images()
    found = node_examples(model, data, k=3, sample=1000, batch_size=32)
    query_image = data.images[:1]
    _, query = logits_and_features(model.model, model_input(model, query_image))
    near = found.nearest(query[0].detach(), "root", "a", k=5)
    feats = torch.from_numpy(found.sample_features).float()
    sims = F.cosine_similarity(feats, query.detach(), dim=1)
    routed = torch.from_numpy(found.sample_route[:, 0] == 0)
    best = sims.masked_fill(~routed, -2).topk(5).values
    assert [round(e.score, 3) for e in near] == [round(v, 3) for v in best.tolist()]
    assert all(found.sample_route[list(found.sample_index).index(e.index), 0] == 0 for e in near)


def test_bad_examples_files_and_inputs(tmp_path):
    model, data = patch_model(), patch_images(30)
    found = node_examples(model, data, k=2, sample=10)
    path = found.save(tmp_path / "ok.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="damaged.npz"):
        NodeExamples.load(damaged)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.npz"):
        NodeExamples.load(junk)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        NodeExamples.load(tmp_path / "missing.npz")
    other = patch_tree(("d0", "d1", "d2", "d3", "d4"))
    with pytest.raises(ValueError, match="ok.npz: examples of other classes"):
        NodeExamples.load(path, hierarchy=other)
    flat = Hierarchy(
        [Node("r", "r", None, PATCH_CLASSES), *(Node(c, c) for c in PATCH_CLASSES)], PATCH_CLASSES
    )
    with pytest.raises(ValueError, match="another hierarchy"):
        NodeExamples.load(path, hierarchy=flat)
    with pytest.raises(ValueError, match="labels must be class indices"):
        node_examples(model, [(data.images[:2], torch.tensor([0, 7]))])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        node_examples(model, data, k=0)


# ------------------------------------------------------------------------------- labels
def test_distinct_label_tells_repeated_labels_apart():
    h = patch_tree()
    assert repeats_ancestor(h, "bb") and not repeats_ancestor(h, "b")
    assert distinct_label(h, "b") == "right"
    assert distinct_label(h, "bb") == "right: c3, c4"
    assert distinct_label(h, "bb", max_listed=1) == "right: c3 +1 more"
    assert (
        distinct_label(h, "bb", class_counts=[0, 0, 0, 1, 5], max_listed=1) == "right: c4 +1 more"
    )


# --------------------------------------------------------------------------- faithfulness
@pytest.mark.slow
def test_deletion_of_salient_pixels_hurts_the_trained_imagenet_model_most():
    skimage = pytest.importorskip("skimage.data")
    from PIL import Image

    from nbdt.classes import dataset_classes
    from nbdt.pretrained import efficientnet_lite0, load_hierarchy_for

    imagenet = dataset_classes("imagenet")
    tree = load_hierarchy_for("imagenet-induced", imagenet.names, imagenet.wnids)
    model = NBDT(efficientnet_lite0(), tree, "soft", "marginal").eval()
    batch = torch.stack([model.transform(Image.fromarray(skimage.chelsea()))])
    explanations = model.explain(batch)
    maps = decision_saliency(model, batch, explanations)
    drops = deletion_test(model, batch, explanations, maps)
    assert drops["salient"].mean() > drops["least"].mean()
    assert drops["salient"].mean() > drops["shifted"].mean()
    assert (drops["salient"] > drops["least"]).mean() >= 0.6


# ----------------------------------------------------------------------------------- CLI
def test_examples_cli_refuses_bad_input_with_one_line(tmp_path, capsys):
    from nbdt.cli.examples import main as examples_main

    missing = str(tmp_path / "missing.pt")
    out = str(tmp_path / "ex.npz")
    assert examples_main([missing, "--dataset", "fashion-mnist", "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0]
    nowhere = str(tmp_path / "no" / "ex.npz")
    assert examples_main([missing, "--dataset", "fashion-mnist", "-o", nowhere]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "ex.npz").exists()


def test_token_models_are_read_as_a_grid_and_branch_layers_are_refused():
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(
        img_size=32,
        patch_size=8,
        num_classes=len(PATCH_CLASSES),
        embed_dim=16,
        depth=2,
        num_heads=2,
    ).eval()
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    model = NBDT(net, patch_tree(), data_config=config)
    assert find_layer(model)[0] == "blocks.0"  # class-token pooling: last block's input
    batch = torch.randn(2, 3, 32, 32)
    maps = decision_saliency(model, batch)
    assert [len(m) for m in maps] == [len(e.path) for e in model.explain(batch)]
    assert maps[0][0].shape == (32, 32) and maps[0][0].std() > 0
    with pytest.raises(ValueError, match="residual"):
        decision_saliency(model, batch, layer="blocks.1.norm1")
