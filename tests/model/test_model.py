"""NBDT: predictions through the rules, explanations (paths, per-sample values), inputs, files."""

import json
import math
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import nbdt
from nbdt.explanation import Explanation, Step, TopClass, field_names
from nbdt.hierarchy import Hierarchy, Node
from nbdt.images import load_image, to_model_mode
from nbdt.model import NBDT, read_checkpoint

CLASSES = [f"c{i}" for i in range(7)]
STEP_KEYS = set(field_names(Step))
EXPLANATION_KEYS = set(field_names(Explanation))


def small_hierarchy() -> Hierarchy:
    """Unbalanced, branching 2 and 3, depth 3, with a leaf right under the root."""
    inner = [
        Node("root", "entity", None, ("animal", "thing", "c6")),
        Node("animal", "animal", None, ("c0", "mammal")),
        Node("mammal", "mammal", None, ("c1", "c2", "c3")),
        Node("thing", "thing", None, ("c4", "c5")),
    ]
    return Hierarchy(inner + [Node(c, f"class {c}") for c in CLASSES], CLASSES)


@pytest.fixture(scope="module")
def net(varied_resnet):
    """timm's test_resnet whose head gives 48x48 random inputs varied classes."""
    return varied_resnet(len(CLASSES), size=48, scale=0.3)


@pytest.fixture(scope="module")
def batch():
    return torch.randn(24, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def check_path(model: NBDT, exp: Explanation) -> None:
    """The path runs root -> predicted leaf, each step's child the next step's node."""
    h = model.hierarchy
    assert [s.node_id for s in exp.path] == [n.id for n in h.path(exp.class_index)[:-1]]
    assert [s.child_id for s in exp.path[:-1]] == [s.node_id for s in exp.path[1:]]
    assert exp.path[-1].child_id == h.class_ids[exp.class_index]
    assert exp.label == h.classes[exp.class_index]
    assert math.prod(s.probability for s in exp.path) == pytest.approx(exp.probability, rel=1e-5)
    for step in exp.path:
        node = h[step.node_id]
        assert step.runner_up_id in node.children and step.runner_up_id != step.child_id
        assert step.label == node.label and step.child_label == h[step.child_id].label
        assert 0 <= step.runner_up_probability <= 1
        assert 0 <= step.entropy <= math.log(len(node.children)) + 1e-6


@pytest.mark.parametrize("node_score", ["mean", "marginal"])
def test_soft_forward_is_the_rules_log_probabilities(net, batch, node_score):
    model = NBDT(net, small_hierarchy(), node_score=node_score)
    out = model(batch)
    assert out.shape == (len(batch), len(CLASSES))
    torch.testing.assert_close(out, model.rules.soft(model.logits(batch)))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(batch)))


def test_marginal_soft_forward_is_the_networks_softmax(net, batch):
    model = NBDT(net, small_hierarchy(), node_score="marginal")
    torch.testing.assert_close(model(batch), net(batch).log_softmax(1), atol=1e-5, rtol=1e-5)


def test_hard_forward_is_a_point_mass_on_the_greedy_descent(net, batch):
    model = NBDT(net, small_hierarchy(), mode="hard")
    out = model(batch)
    decision = model.rules.hard(net(batch))
    assert torch.equal(out.argmax(1), decision)
    assert torch.equal(out.exp(), torch.nn.functional.one_hot(decision, len(CLASSES)).float())


def test_class_count_mismatch_names_the_fix():
    h = small_hierarchy()
    net = timm.create_model("test_resnet", num_classes=10)
    with pytest.raises(
        ValueError, match="hierarchy has 7 leaves, model head has 10 classes: build"
    ):
        NBDT(net, h)


@pytest.mark.parametrize("kwargs", [{"mode": "greedy"}, {"node_score": "max"}])
def test_bad_choices(net, kwargs):
    with pytest.raises(ValueError, match="must be one of"):
        NBDT(net, small_hierarchy(), **kwargs)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("node_score", ["mean", "marginal"])
def test_explanations_are_consistent_and_match_predictions(net, batch, mode, node_score):
    model = NBDT(net, small_hierarchy(), mode=mode, node_score=node_score)
    explanations = model.explain(batch, top_k=3)
    predicted = model(batch).argmax(1).tolist()
    assert [e.class_index for e in explanations] == predicted
    assert len({e.class_index for e in explanations}) >= 3  # a mixed batch
    soft = model.rules.soft(net(batch)).exp()
    node_probs = model.rules.node_log_probs(net(batch)).exp()
    inner = [n.id for n in model.hierarchy.inner_nodes]
    for i, exp in enumerate(explanations):
        check_path(model, exp)
        assert (exp.mode, exp.node_score) == (mode, node_score)
        assert exp.probability == pytest.approx(soft[i, exp.class_index].item(), rel=1e-5)
        assert [t.class_index for t in exp.top_k] == soft[i].topk(3).indices.tolist()
        for step in exp.path:
            node = inner.index(step.node_id)
            children = model.hierarchy[step.node_id].children
            probs = node_probs[i, node, : len(children)]
            assert step.probability == pytest.approx(probs[children.index(step.child_id)].item())
            entropy = -(probs * probs.log()).sum().item()
            assert step.entropy == pytest.approx(entropy, rel=1e-4, abs=1e-6)
            others = [
                p for c, p in zip(children, probs.tolist(), strict=True) if c != step.child_id
            ]
            assert step.runner_up_probability == pytest.approx(max(others))
            if mode == "hard":  # greedy descent: the most probable child at every node
                assert step.probability >= max(others)


def test_each_sample_of_a_batch_is_explained_as_if_alone(net, batch):
    model = NBDT(net, small_hierarchy())
    together = model.explain(batch[:8])
    alone = [model.explain(x) for x in batch[:8]]
    assert len({e.class_index for e in together}) >= 2
    for a, b in zip(together, alone, strict=True):
        da, db = a.to_dict(), b.to_dict()
        assert da["class_index"] == db["class_index"]
        assert [s["child_id"] for s in da["path"]] == [s["child_id"] for s in db["path"]]
        assert da["probability"] == pytest.approx(db["probability"], rel=1e-4)
        for sa, sb in zip(da["path"], db["path"], strict=True):
            assert sa["probability"] == pytest.approx(sb["probability"], rel=1e-4, abs=1e-6)
            assert sa["entropy"] == pytest.approx(sb["entropy"], rel=1e-3, abs=1e-6)


def test_text_and_json_forms(net, batch):
    model = NBDT(net, small_hierarchy())
    exp = model.explain(batch[0], top_k=2)
    text = str(exp)
    assert "\n" not in text
    decisions = " -> ".join(f"{s.child_label} ({100 * s.probability:.1f}%)" for s in exp.path)
    assert text == f"Prediction: {exp.label} // Decisions: {decisions}"
    assert re.fullmatch(r"Prediction: .+ // Decisions: .+ \(\d+\.\d%\)", text)
    data = json.loads(json.dumps(exp.to_dict()))
    assert set(data) == EXPLANATION_KEYS
    assert all(set(step) == STEP_KEYS for step in data["path"])
    assert [set(t) for t in data["top_k"]] == [set(field_names(TopClass))] * 2
    assert data["top_k"][0]["class_index"] == data["class_index"]


def test_text_form_merges_consecutive_children_of_one_label():
    def step(child: str, p: float) -> Step:
        return Step("n", "node", None, 0.5, child, child, p, "r", "other", 1 - p)

    path = (step("whole", 0.9), step("whole", 0.5), step("cat", 0.8), step("whole", 0.6))
    exp = Explanation(3, "cat", None, 0.216, "soft", "mean", (), path)
    assert str(exp) == "Prediction: cat // Decisions: whole (45.0%) -> cat (80.0%) -> whole (60.0%)"
    assert len(exp.to_dict()["path"]) == 4  # the data keeps every step


def test_input_kinds_give_the_same_explanations(net, tmp_path):
    model = NBDT(net, small_hierarchy())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / "photo.png"
    images[1].save(path)
    tensor = model.transform(images[2])
    assert isinstance(model.explain(images[0]), Explanation)
    assert isinstance(model.explain(str(path)), Explanation)
    assert isinstance(model.explain(tensor), Explanation)
    mixed = model.explain([images[0], path, tensor])
    alone = [model.explain(images[0]), model.explain(path), model.explain(tensor[None])[0]]
    assert [e.class_index for e in mixed] == [e.class_index for e in alone]
    assert [e.probability for e in mixed] == pytest.approx([e.probability for e in alone], rel=1e-4)


def test_explain_uses_eval_mode_and_restores_training(varied_resnet, batch):
    model = NBDT(varied_resnet(len(CLASSES), size=48, scale=0.3), small_hierarchy()).train()
    model.model.train()
    first = model.explain(batch[:4])
    second = model.explain(batch[:4])
    assert model.training and model.model.training
    assert [e.to_dict() for e in first] == [e.to_dict() for e in second]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_explain_follows_the_models_dtype(varied_resnet, batch, dtype):
    model = NBDT(varied_resnet(len(CLASSES), size=48, scale=0.3).to(dtype), small_hierarchy())
    explanations = model.explain(batch[:6])  # float32 input, cast to the model's dtype
    for exp in explanations:
        check_path(model, exp)
    if dtype == torch.float64:
        float32 = varied_resnet(len(CLASSES), size=48, scale=0.3)
        reference = NBDT(float32, small_hierarchy()).explain(batch[:6])
        assert [e.class_index for e in explanations] == [e.class_index for e in reference]


def test_wrapping_keeps_an_eval_model_in_eval_mode(net):
    assert not NBDT(net, small_hierarchy()).training


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_any_image_mode_is_explained(net, mode):
    model = NBDT(net, small_hierarchy())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    converted = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    exp = model.explain(converted)
    check_path(model, exp)


def test_mode_conversion_values():
    white16 = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert white16.mode == "I;16"
    assert to_model_mode(white16).getpixel((0, 0)) == (255, 255, 255)
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # transparent black shows as white
    assert to_model_mode(clear).getpixel((0, 0)) == (255, 255, 255)
    assert to_model_mode(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255,) * 3
    assert to_model_mode(Image.new("RGB", (2, 2), (255, 0, 0)), channels=1).mode == "L"
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        to_model_mode(clear, channels=4)


def test_load_image_converts_to_the_models_channels(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 5), 65535, dtype=np.uint16)).save(path)
    assert load_image(path).mode == "I;16"
    rgb = load_image(path, channels=3)
    assert (rgb.mode, rgb.size, rgb.getpixel((0, 0))) == ("RGB", (5, 3), (255, 255, 255))
    assert load_image(path, channels=1).mode == "L"
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: images can feed models"):
        load_image(path, channels=2)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("not-an-image", "not an image"),
        ("truncated-png", "cannot decode"),
        ("truncated-jpeg", "cannot decode"),
        ("bomb", "decompression bomb"),
        ("bomb-warning", "decompression bomb"),
    ],
)
def test_unreadable_images_raise_one_line_naming_the_file(bad_image_files, net, name, message):
    path = bad_image_files[name]
    with pytest.raises(ValueError, match=message) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        NBDT(net, small_hierarchy()).explain(path)


def test_bad_tensor_inputs(net):
    model = NBDT(net, small_hierarchy())
    with pytest.raises(ValueError, match="C=3"):
        model.explain(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="preprocessed float"):
        model.explain(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="different shapes"):
        model.explain([torch.zeros(3, 32, 32), torch.zeros(3, 40, 40)])
    with pytest.raises(ValueError, match="top_k"):
        model.explain(torch.zeros(3, 32, 32), top_k=-1)
    with pytest.raises(TypeError, match="got int"):
        model.explain([3])


def test_save_load_round_trip(net, batch, tmp_path):
    model = NBDT(net, small_hierarchy(), mode="hard", node_score="marginal")
    path = model.save(tmp_path / "model.pt", epoch=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left
    loaded = nbdt.load(path)
    assert not loaded.training
    assert (loaded.mode, loaded.node_score, loaded.arch) == ("hard", "marginal", "test_resnet")
    assert loaded.hierarchy == model.hierarchy
    assert loaded.data_config == model.data_config
    torch.testing.assert_close(loaded.logits(batch), model.logits(batch), rtol=0, atol=0)
    assert torch.equal(loaded(batch), model(batch))
    assert read_checkpoint(path)["epoch"] == 3  # extra keys are kept, and ignored by load


def test_from_arch_keeps_kwargs_and_channels(tmp_path):
    model = NBDT.from_arch("test_resnet", small_hierarchy(), in_chans=1, drop_rate=0.1)
    assert model.model_kwargs == {"num_classes": 7, "in_chans": 1, "drop_rate": 0.1}
    assert model.data_config["input_size"][0] == 1 and len(model.data_config["mean"]) == 1
    exp = model.explain(Image.new("RGB", (30, 30), "orange"))
    check_path(model, exp)
    loaded = nbdt.load(model.save(tmp_path / "gray.pt"))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_save_needs_a_timm_architecture(tmp_path):
    class Linear(torch.nn.Module):
        num_classes = 7

        def forward(self, x):
            return x

    model = NBDT(Linear(), small_hierarchy())
    with pytest.raises(ValueError, match="architecture name is unknown"):
        model.save(tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


class Payload:
    """Anything that needs pickled code to load."""


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("pickled", r"refused: loading it would run pickled Python code \(\S*Payload\)"),
        ("garbage", "not an nbdt model file \\(Unsupported operand"),
        ("truncated", "not an nbdt model file"),
        ("other-torch-file", "not an nbdt model file"),
        ("newer-version", "format version 2"),
        ("directory", "is a directory"),
    ],
)
def test_bad_model_files_raise_one_line_naming_the_file(net, tmp_path, kind, message):
    path = tmp_path / "bad.pt"
    good = NBDT(net, small_hierarchy()).checkpoint()
    if kind == "pickled":
        torch.save({**good, "payload": Payload()}, path)
    elif kind == "garbage":
        path.write_bytes(b"\x80\x02}q\x00 not a checkpoint " * 20)
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "other-torch-file":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "newer-version":
        torch.save({**good, "version": 2}, path)
    else:
        path.mkdir()
    with pytest.raises(ValueError, match=message) as info:
        nbdt.load(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt: no such file"):
        nbdt.load(tmp_path / "nope.pt")


def test_save_refuses_kwargs_that_would_not_rebuild_the_network(tmp_path):
    h = Hierarchy([Node("r", "r", None, ("a", "b")), Node("a", "a"), Node("b", "b")], ["a", "b"])
    vit = timm.create_model("test_vit", img_size=32, num_classes=2)
    with pytest.raises(ValueError, match=r"would not rebuild this network \(pos_embed: .*img_size"):
        NBDT(vit, h).save(tmp_path / "vit.pt")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    kwargs = {"img_size": 32, "num_classes": 2}
    NBDT(vit, h, model_kwargs=kwargs).save(tmp_path / "vit.pt")
    assert nbdt.load(tmp_path / "vit.pt").model_kwargs == kwargs


def test_explanation_round_trips_through_its_dict(net, batch):
    exp = NBDT(net, small_hierarchy()).explain(batch[0], top_k=3)
    assert Explanation.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
