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


# ------------------------------------------------------------- readers: one line, bounded
def _tree_json() -> dict:
    return Hierarchy.random(CLASSES, seed=0).to_node_link()


BAD_TREES = {
    "graph a string": lambda d: {**d, "graph": "x"},
    "wnid a number": lambda d: {**d, "nodes": [{**d["nodes"][0], "wnid": 5}, *d["nodes"][1:]]},
    "nodes not a list": lambda d: {**d, "nodes": "abc"},
    "a link without target": lambda d: {**d, "links": [{"source": "x"}]},
}


@pytest.mark.parametrize("case", [*BAD_TREES, "nested 100000 deep"])
def test_a_damaged_hierarchy_is_one_error_in_every_reader(
    case, onnx_files, image, tmp_path, capsys
):
    from nbdt.cli.explain import main as explain_main
    from nbdt.cli.hierarchy import main as hierarchy_main

    if case in BAD_TREES:
        text = json.dumps(BAD_TREES[case](_tree_json()))
        with pytest.raises(ValueError, match="node-link JSON"):
            Hierarchy.from_node_link(json.loads(text))
    else:
        text = "[" * 100_000
    path = tmp_path / "tree.json"
    path.write_text(text)
    assert hierarchy_main(["show", str(path)]) == 2
    assert str(path) in _one_error(capsys, "nbdt-hierarchy")
    onnx_path = _with_metadata(onnx_files["good"], tmp_path / "bad.onnx", hierarchy=text)
    assert explain_main(["--onnx", str(onnx_path), str(image)]) == 2
    assert "damaged nbdt metadata" in _one_error(capsys, "nbdt-explain")


@pytest.fixture(scope="module")
def examples_file(tmp_path_factory) -> Path:
    from nbdt.evidence.examples import node_examples

    images = torch.randint(0, 255, (12, 3, 28, 28), dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(images, torch.arange(12) % 4)
    found = node_examples(_model(), data, k=2, sample=6)
    return found.save(tmp_path_factory.mktemp("ex") / "ex.npz")


def _rewritten(source: Path, target: Path, **arrays) -> Path:
    import numpy as np

    with np.load(source) as data:
        contents = {name: data[name] for name in data.files}
    contents.update(arrays)
    np.savez(target, **contents)
    return target


def test_node_examples_files_that_lie_are_refused_by_name(examples_file, tmp_path, monkeypatch):
    import zipfile

    import numpy as np

    from nbdt.evidence.examples import NodeExamples

    with np.load(examples_file) as data:
        offsets = data["thumbnail_offsets"]
    short = _rewritten(examples_file, tmp_path / "short.npz", thumbnail_offsets=offsets[:2])
    with pytest.raises(ValueError, match=f"{short}: .*thumbnail offsets"):
        NodeExamples.load(short)

    huge = tmp_path / "huge.npz"  # a header claiming 10^12 elements over 80 bytes
    header = np.lib.format.header_data_from_array_1_0(np.zeros(10))
    header["shape"] = (10**12,)
    with zipfile.ZipFile(huge, "w") as archive, archive.open("index.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(10).tobytes())
    with pytest.raises(ValueError, match=r"claims 8,000,000,000,000 bytes"):
        NodeExamples.load(huge)

    bomb = tmp_path / "bomb.npz"  # 4 KiB deflated asking 4 MiB, against a limit of 1 MiB
    monkeypatch.setattr("nbdt.evidence.examples.MAX_FILE_ARRAYS", 2**20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("index.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"shape": (2**20,), "fortran_order": False, "descr": "<f4"}
            )
            f.write(bytes(2**22))
    assert bomb.stat().st_size < 2**13
    with pytest.raises(ValueError, match=r"4 MiB; node examples need at most 1 MiB"):
        NodeExamples.load(bomb)
    assert NodeExamples.load(examples_file).k == 2


def test_node_examples_k_is_bounded_by_what_it_can_need():
    from nbdt.evidence.examples import node_examples

    images = torch.zeros(8, 3, 28, 28, dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(images, torch.arange(8) % 4)
    assert node_examples(_model(), data, k=100_000_000).k == 8  # no more than the images

    class Many(torch.utils.data.Dataset):
        def __len__(self):
            return 10**12

    with pytest.raises(ValueError, match=r"k 100000000: the example tables would take"):
        node_examples(_model(), Many(), k=100_000_000)


# ---------------------------------------------------------------- pruning says what it did
def test_a_pruning_that_removes_nothing_is_refused_and_the_achieved_share_is_reported():
    pytest.importorskip("torch_pruning")
    from nbdt.deploy.prune import prune, removed_share

    model = _model()
    with pytest.raises(ValueError, match="ratio 0.99: removes no channel .* multiples of 8"):
        prune(model, 0.99, round_to=8)  # rounding to 8 channels: nothing left to remove
    tiny = prune(model, 1e-9, round_to=8)
    assert 0 < removed_share(model, tiny) < 0.05  # what was achieved, not what was asked


def test_compress_refuses_a_negative_round_to_before_reading_anything(tmp_path):
    from nbdt.deploy.compress import compress

    with pytest.raises(ValueError, match="--round-to: a channel multiple >= 1"):
        compress(tmp_path / "missing.pt", tmp_path / "out", prune=0.5, round_to=-5)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- one class per WordNet concept
def test_edits_never_give_one_wordnet_id_to_two_classes():
    from nbdt.classes import dataset_classes
    from nbdt.edits import add_leaf, rename
    from nbdt.tree import Node

    tree = Hierarchy.wordnet(dataset_classes("fashion-mnist"))
    with pytest.raises(ValueError, match="n03057021 to two classes, 'Coat' and 'coat'"):
        rename(tree, "Bag", "n03057021")
    with pytest.raises(ValueError, match="n03057021 to two classes, 'Coat' and 'coats'"):
        add_leaf(tree, Node("n03057021-2", "coats", "n03057021"), tree.root.id)
    assert rename(tree, "Bag", "purse").classes[8] == "purse"  # other names still go


def test_an_added_class_placed_by_a_guessed_sense_is_noted(tmp_path, capsys):
    import argparse

    from nbdt.classes import dataset_classes
    from nbdt.cli import fix

    folder = tmp_path / "boots"
    folder.mkdir()
    Image.new("RGB", (28, 28)).save(folder / "a.png")
    tree = Hierarchy.wordnet(dataset_classes("fashion-mnist"))
    args = argparse.Namespace(add_class=[f"Ugly winter boot={folder}"])
    assert [name for name, _ in fix._additions(args, tree)] == ["Ugly winter boot"]
    err = capsys.readouterr().err
    assert "note: --add-class 'Ugly winter boot' -> n02872752" in err
    assert "by the rule 'last words'" in err


def test_compress_measures_no_nan_model(onnx_files):
    import numpy as np

    from nbdt.deploy.measure import evaluate_onnx
    from nbdt.rules import NonFiniteLogits

    inputs = np.zeros((4, 3, 28, 28), dtype=np.float32)
    files = {"uncompressed": onnx_files["nan"]}
    with pytest.raises(NonFiniteLogits):  # no table of 6% and 14% read from NaN
        evaluate_onnx(files, inputs, np.arange(4), reference="uncompressed")


def test_compress_refuses_the_folder_dataset_by_name(tmp_path):
    from nbdt.deploy.compress import compress

    with pytest.raises(ValueError, match="--dataset folder: nbdt-compress measures on"):
        compress(tmp_path / "m.pt", tmp_path / "out", prune=0.5, dataset="folder")


# ------------------------------------------------- one class-matching rule (nbdt-eval's)
def _fm_model(folder: Path, classes: list[str], holdout: list[str] | None = None) -> Path:
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet_gn", num_classes=len(classes))
    tree = Hierarchy.wordnet(classes)
    folder.mkdir()
    if holdout is not None:
        (folder / "args.json").write_text(json.dumps({"holdout_classes": holdout}))
    return NBDT(net, tree, data_config=CONFIG).save(folder / "best.pt")


def test_compress_matches_classes_as_eval_does(tmp_path, stripes_dir):
    from nbdt.classes import dataset_classes
    from nbdt.data import load_dataset
    from nbdt.deploy.compress import compress

    names = list(dataset_classes("fashion-mnist").names)
    options = {"quantize": ["int8-weights"], "data_dir": str(stripes_dir), "test": 40}
    five = _fm_model(tmp_path / "five", names[:5])
    with pytest.raises(ValueError, match="not one of the model's classes"):
        compress(five, tmp_path / "out5", calibration=8, **options)
    assert not (tmp_path / "out5").exists()

    held = _fm_model(tmp_path / "held", names[:9], holdout=["Ankle boot"])
    result = compress(held, tmp_path / "out9", calibration=8, **options)
    targets = load_dataset("fashion-mnist", "test", stripes_dir).targets
    seen = int((targets != 9).sum())
    report = json.loads((tmp_path / "out9" / "compress.json").read_text())
    assert report["test_images"] == min(40, seen)  # the seen classes' images only
    assert set(result.rows) == {"uncompressed", "int8-weights"}


def test_examples_match_classes_as_eval_does(tmp_path, stripes_dir, capsys):
    import numpy as np

    from nbdt.classes import dataset_classes
    from nbdt.cli.examples import main

    names = list(dataset_classes("fashion-mnist").names)
    argv = ["--dataset", "fashion-mnist", "--data-dir", str(stripes_dir), "--split", "test"]
    held = _fm_model(tmp_path / "held", names[:9], holdout=["Ankle boot"])
    out = tmp_path / "ex.npz"
    assert main([str(held), *argv, "-k", "1", "--sample", "8", "-o", str(out)]) == 0
    with np.load(out) as data:
        assert int(data["sample_class"].max()) < 9
    five = _fm_model(tmp_path / "five", names[:5])
    assert main([str(five), *argv, "-o", str(tmp_path / "five.npz")]) == 2
    assert "not one of the model's classes" in capsys.readouterr().err
