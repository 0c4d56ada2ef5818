"""No made-up answer (issue 18): NaN weights, damaged ONNX metadata and bad data configs are
one error line in every reader, never a table, an .npz or an explanation of NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIG = {"input_size": (3, 28, 28), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
CLASSES = [f"class{i}" for i in range(4)]


def _model(nan: bool = False) -> NBDT:
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet_gn", num_classes=len(CLASSES))
    if nan:
        with torch.no_grad():
            net.get_classifier().weight.fill_(float("nan"))
    return NBDT(net, Hierarchy.random(CLASSES, seed=0), data_config=CONFIG)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    from nbdt.deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return {
        "good": export_onnx(_model(), folder / "good.onnx"),
        "nan": export_onnx(_model(nan=True), folder / "nan.onnx"),
    }


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (28, 28), (120, 30, 200)).save(path)
    return path


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p for p in model.metadata_props}
    for key, value in changes.items():
        props[f"nbdt.{key}"].value = value
    onnx.save(model, str(target))
    return target


def _one_error(capsys, prog: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), captured.err
    return lines[0]


def test_explain_onnx_with_nan_weights_is_an_error_not_nan_percent(onnx_files, image, capsys):
    from nbdt.cli.explain import main

    assert main(["--onnx", str(onnx_files["nan"]), str(image)]) == 2
    line = _one_error(capsys, "nbdt-explain")
    assert str(image) in line and "not finite" in line
    assert main(["--onnx", str(onnx_files["good"]), str(image)]) == 0
    assert "nan%" not in capsys.readouterr().out


def _config(**changes) -> str:
    return json.dumps({**CONFIG, **changes})


ONNX_CASES = {
    "std 0": ({"data_config": _config(std=[0, 0, 0])}, "std"),
    "no input_size": ({"data_config": json.dumps({"mean": [0.5] * 3})}, "input_size"),
    "interpolation nosuch": ({"data_config": _config(interpolation="nosuch")}, "interpolation"),
    "crop_pct 1.5": ({"data_config": _config(crop_pct=1.5)}, "crop_pct"),
    "8192 pixels": ({"data_config": _config(input_size=[3, 8192, 8192])}, "input_size"),
}


@pytest.mark.parametrize("case", ONNX_CASES)
def test_damaged_onnx_metadata_is_refused_at_load(case, onnx_files, image, tmp_path, capsys):
    from nbdt.cli.explain import main

    changes, key = ONNX_CASES[case]
    path = _with_metadata(onnx_files["good"], tmp_path / "bad.onnx", **changes)
    assert main(["--onnx", str(path), str(image)]) == 2
    line = _one_error(capsys, "nbdt-explain")
    assert str(path) in line and key in line


@pytest.mark.parametrize("classes", [5, 20])
def test_an_onnx_tree_of_other_classes_is_refused(classes, onnx_files, image, tmp_path, capsys):
    from nbdt.cli.explain import main

    names = [f"c{i}" for i in range(classes)]
    tree = Hierarchy.random(names, seed=0)
    changes = {"hierarchy": json.dumps(tree.to_node_link()), "classes": json.dumps(names)}
    path = _with_metadata(onnx_files["good"], tmp_path / "bad.onnx", **changes)
    assert main(["--onnx", str(path), str(image)]) == 2
    assert f"a tree of {classes} classes for a graph of 4" in _one_error(capsys, "nbdt-explain")


def test_node_examples_of_a_nan_model_are_an_error(tmp_path):
    from nbdt.evidence.examples import node_examples
    from nbdt.rules import NonFiniteLogits

    images = torch.zeros(6, 3, 28, 28, dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(images, torch.arange(6) % 4)
    with pytest.raises(NonFiniteLogits):
        node_examples(_model(nan=True), data, k=2)


@pytest.mark.parametrize("bad", [-1, 4])
def test_path_log_probs_refuses_a_class_index_out_of_range(bad):
    from nbdt.rules import DecisionRules

    rules = DecisionRules(Hierarchy.random(CLASSES, seed=0))
    logits = torch.randn(2, len(CLASSES))
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        rules.path_log_probs(logits, torch.tensor([0, bad]))
    assert rules.path_log_probs(logits, torch.tensor([0, 3])).shape[0] == 2
