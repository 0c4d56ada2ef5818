"""The reliability faults: each test reproduces one way a user lost a run, was misled or got a
traceback, and checks what happens now."""

import collections
import os
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from nbdt.hierarchy import Hierarchy, Node
from nbdt.loss import SoftTreeSupLoss
from nbdt.model import NBDT
from nbdt.rules import DecisionRules

CLASSES = ["cat", "dog", "car", "ship"]


def tree() -> Hierarchy:
    inner = [
        Node("root", "entity", None, ("animal", "vehicle")),
        Node("animal", "animal", None, ("cat", "dog")),
        Node("vehicle", "vehicle", None, ("car", "ship")),
    ]
    return Hierarchy([*inner, *(Node(c, c) for c in CLASSES)], CLASSES)


# ------------------------------------------------------------------ 1: weights that do not fit
def test_weights_of_another_architecture_are_refused_naming_the_file_and_keys(tmp_path):
    from nbdt.networks import create_model

    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(ValueError, match=r"other\.pth.*does not fit test_resnet.*conv"):
        create_model("test_resnet", pretrained_file=str(other), num_classes=4)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(2), "b": torch.ones(3)}, plain)
    with pytest.raises(ValueError, match=r"plain\.pt.*'a'"):
        create_model("test_resnet", pretrained_file=str(plain), num_classes=4)


def test_weights_with_another_head_load_the_body_and_report_the_head(tmp_path, capsys):
    from nbdt.networks import create_model

    source = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "seven.pth"
    torch.save(source.state_dict(), path)
    model = create_model("test_resnet", pretrained_file=str(path), num_classes=4)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for key, value in body.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert model.fc.out_features == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seven.pth" in err and "fc.weight" in err


# ------------------------------------------------------------------ 2: NaN is no answer
def test_non_finite_logits_are_an_error_in_the_rules_and_in_explain():
    rules = DecisionRules(tree())
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [float("nan"), 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"non-finite.*\[1\]"):
        rules.hard(logits)
    torch.manual_seed(0)
    model = NBDT(timm.create_model("test_resnet", num_classes=4), tree())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        model.explain(torch.zeros(3, 32, 32))


def test_a_float_image_full_of_nan_is_refused_without_a_numpy_warning(tmp_path):
    from nbdt.images import load_image

    path = tmp_path / "nan.tiff"
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"nan\.tiff.*not finite"):
            load_image(path, 3)


# ------------------------------------------------------------------ 5: duplicate classes
@pytest.mark.parametrize("kind", ["wordnet", "random", "induced"])
def test_a_class_listed_twice_is_refused_by_every_builder(kind):
    from nbdt import builders

    with pytest.raises(ValueError, match="'cat' is listed twice"):
        builders.build(kind, ["cat", "cat", "dog"], weights=torch.randn(3, 5))


def test_a_hierarchy_file_listing_a_class_twice_is_refused_even_with_a_class_order():
    data = tree().to_node_link()
    data["graph"]["classes"] = ["cat", "cat", "car", "ship"]
    with pytest.raises(ValueError, match="'cat' is listed twice"):
        Hierarchy.from_node_link(data, classes=CLASSES)
    with pytest.raises(ValueError, match="'cat' is listed twice"):
        Hierarchy.from_node_link(data)


# ------------------------------------------------------------------ 8: data_config checked
@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": (3, 60000, 60000)}, "input_size"),
        ({"input_size": "x"}, "input_size"),
        ({"mean": (0.5,)}, "mean"),
        ({"std": (0.0, 1.0, 1.0)}, "std"),
    ],
)
def test_a_checkpoints_data_config_is_checked_when_loading(change, message, tmp_path):
    import nbdt

    model = NBDT(timm.create_model("test_resnet", num_classes=4), tree())
    checkpoint = model.checkpoint()
    checkpoint["data_config"] = {**checkpoint["data_config"], **change}
    path = tmp_path / "bad.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=rf"bad\.pt.*data_config.*{message}"):
        nbdt.load(path)


# ------------------------------------------------------------------ 10: parse errors reported
@pytest.mark.parametrize(
    "content, cause", [(b"not json", "not a JSON"), (b"\x00\xff\x00", "not a JSON")]
)
def test_a_broken_hierarchy_file_is_reported_as_broken(content, cause, tmp_path):
    from nbdt.pretrained import load_hierarchy_for

    path = tmp_path / "tree.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=cause) as error:
        load_hierarchy_for(path, CLASSES, [None] * 4)
    assert "leaves are not" not in str(error.value)


# ------------------------------------------------------------------ 11: pickled code
def test_pickled_code_is_refused_with_nbdts_message_only(tmp_path):
    from nbdt.checkpoint import read_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "nbdt-model", "e": Evil(), "o": collections.OrderedDict()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as error:
            read_checkpoint(path)
    message = str(error.value)
    assert "pickled Python code" in message and "weights_only" not in message
    assert "safe_globals" not in message


# ------------------------------------------------------------------ 12: labels out of range
@pytest.mark.parametrize("label", [4, -1])
def test_a_label_out_of_range_is_a_value_error_naming_it(label):
    loss = SoftTreeSupLoss(tree())
    with pytest.raises(ValueError, match=rf"label {label}.*4 classes"):
        loss(torch.randn(2, 4), torch.tensor([0, label]))


# ------------------------------------------------------------------ smaller
def test_a_fifo_is_refused_as_an_image_without_blocking(tmp_path):
    from nbdt.images import load_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe\.png.*not a regular file"):
        load_image(fifo)


def test_a_bom_in_a_class_file_is_not_part_of_the_first_name(tmp_path):
    from nbdt.classes import read_class_file

    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcat\ndog\n".encode())
    assert read_class_file(path) == ["cat", "dog"]


def test_text_and_html_print_a_tiny_probability_alike():
    from nbdt.explanation import Explanation, Step, format_probability

    assert format_probability(0.0001) == "<0.1%"
    assert format_probability(0.0) == "0.0%" and format_probability(0.4567) == "45.7%"
    step = Step(
        node_id="root", label="entity", wnid=None, entropy=0.1, child_id="cat",
        child_label="cat", probability=0.0001, runner_up_id="dog", runner_up_label="dog",
        runner_up_probability=0.9999,
    )  # fmt: skip
    explanation = Explanation(
        class_index=0, label="cat", wnid=None, probability=0.0001, mode="soft",
        node_score="mean", top_k=(), path=(step,),
    )  # fmt: skip
    assert "(<0.1%)" in str(explanation)
