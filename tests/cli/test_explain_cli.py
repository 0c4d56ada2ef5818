"""nbdt-explain: text and JSON output, overrides, every bad input, the offline ImageNet example."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbdt.cli.explain import main as explain_main
from nbdt.explanation import Explanation, field_names
from nbdt.hierarchy import Hierarchy, Node

CLASSES = ["cat", "dog", "car", "ship"]
FELINE = "n02120997"
KEYS = {"image", *field_names(Explanation)}


def hierarchy(grouping: str) -> Hierarchy:
    """Two trees over the same classes: ``animal/vehicle`` pairs, or a flat root."""
    leaves = [Node(c, c) for c in CLASSES]
    if grouping == "flat":
        return Hierarchy([Node("root", "thing", None, tuple(CLASSES)), *leaves], CLASSES)
    inner = [
        Node("root", "entity", None, ("animal", "vehicle")),
        Node("animal", "animal", None, ("cat", "dog")),
        Node("vehicle", "vehicle", None, ("car", "ship")),
    ]
    return Hierarchy([*inner, *leaves], CLASSES)


@pytest.fixture(scope="module")
def checkpoint(tiny_nbdt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return tiny_nbdt(hierarchy("pairs"), size=None).save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """An RGBA PNG and a greyscale JPEG."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, (60, 30), dtype=np.uint8))
    rgba.save(folder / "a.png")
    grey.save(folder / "b.jpg")
    return [folder / "a.png", folder / "b.jpg"]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = explain_main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output(capsys, checkpoint, images):
    code, out, err = run(capsys, *images, "--checkpoint", checkpoint, "--top-k", 2)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    for image, line, top in zip(images, lines[::2], lines[1::2], strict=True):
        assert line.startswith(f"{image}: Prediction: ")
        assert " // Decisions: " in line and line.count(" -> ") == 1  # depth 2
        assert top.startswith("  top-2: ")


def test_json_output_and_overrides(capsys, checkpoint, images):
    argv = [*images, "--checkpoint", checkpoint, "--json", "--mode", "hard"]
    code, out, err = run(capsys, *argv, "--node-score", "marginal", "--top-k", 3)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [d["image"] for d in data] == [str(i) for i in images]
    for d in data:
        assert set(d) == KEYS
        assert (d["mode"], d["node_score"], len(d["top_k"])) == ("hard", "marginal", 3)
        assert d["path"][0]["node_id"] == "root" and d["path"][-1]["child_id"] == d["label"]


def test_top_k_zero_and_the_checkpoints_own_settings(capsys, checkpoint, images):
    code, out, _ = run(capsys, images[0], "--checkpoint", checkpoint, "--json", "--top-k", 0)
    [d] = json.loads(out)
    assert code == 0 and d["top_k"] == []
    assert (d["mode"], d["node_score"]) == ("soft", "mean")


def test_hierarchy_file_replaces_the_checkpoints(capsys, checkpoint, images, tmp_path):
    tree = hierarchy("flat").save(tmp_path / "flat.json")
    code, out, _ = run(capsys, images[0], "--checkpoint", checkpoint, "--hierarchy", tree, "--json")
    [d] = json.loads(out)
    assert code == 0 and [s["node_id"] for s in d["path"]] == ["root"]
    assert d["path"][0]["label"] == "thing"


def test_html_output(capsys, checkpoint, images, tmp_path):
    page = tmp_path / "explained.html"
    code, out, err = run(capsys, *images, "--checkpoint", checkpoint, "-o", page)
    assert code == 0 and f"wrote {page}" in err
    text = page.read_text(encoding="utf-8")
    label = out.split("Prediction: ")[1].split(" //")[0]
    assert text.lstrip().lower().startswith("<!doctype html") and label in text


@pytest.mark.parametrize(
    "name", ["missing", "directory", "not-an-image", "truncated-png", "truncated-jpeg", "bomb"]
)
def test_bad_image_among_good_ones(capsys, checkpoint, images, bad_image_files, name):
    bad = bad_image_files[name]
    code, out, err = run(capsys, images[0], bad, images[1], "--checkpoint", checkpoint)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"nbdt-explain: error: {bad}: ")
    assert [line.split(": Prediction")[0] for line in out.splitlines()[::2]] == [
        str(images[0]),
        str(images[1]),
    ]


def test_several_bad_images_each_get_a_line(capsys, checkpoint, bad_image_files):
    bad = [bad_image_files["missing"], bad_image_files["bomb-warning"]]
    code, out, err = run(capsys, *bad, "--checkpoint", checkpoint, "--json")
    assert code == 2 and json.loads(out) == []
    for path, line in zip(bad, err.splitlines(), strict=True):
        assert line.startswith(f"nbdt-explain: error: {path}: ")


class Payload:
    """Anything that needs pickled code to load."""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/nope.pt"], "nope.pt: no such file"),
        (["--checkpoint", "{tmp}/pickled.pt"], "refused: loading it would run pickled Python code"),
        (["--checkpoint", "{tmp}/notes.txt"], "notes.txt: not an nbdt model file"),
        (["--checkpoint", "{ckpt}", "--hierarchy", "{tmp}/none.json"], "none.json"),
        (["--checkpoint", "{ckpt}", "--hierarchy", "{tmp}/notes.txt"], "notes.txt"),
        (
            ["--checkpoint", "{ckpt}", "--hierarchy", "cifar10-wordnet"],
            "cifar10-wordnet: its leaves are not the 4 classes",
        ),
        (["--top-k", "-1"], "--top-k: expected a non-negative integer"),
        (["--mode", "greedy"], "--mode: invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, checkpoint, images, tmp_path, args, message):
    torch.save({"payload": Payload()}, tmp_path / "pickled.pt")
    (tmp_path / "notes.txt").write_text("not a model\n")
    argv = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    code, out, err = run(capsys, images[0], *argv)
    assert code == 2 and out == ""
    assert message in err.splitlines()[-1]
    if not argv[0].startswith("--top-k") and not argv[0].startswith("--mode"):
        assert err.count("\n") == 1 and err.startswith("nbdt-explain: error: ")


@pytest.mark.slow
def test_console_script(checkpoint, images, bad_image_files):
    script = Path(sys.executable).parent / "nbdt-explain"
    bad = bad_image_files["truncated-png"]
    argv = [script, images[0], bad, "--checkpoint", checkpoint]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout.startswith(f"{images[0]}: Prediction: ")
    assert result.stderr.startswith(f"nbdt-explain: error: {bad}: cannot decode image")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def feline_ancestors(path: list[dict]) -> list[str]:
    """Inner nodes on a path that are felines (the synset feline or a hyponym of it)."""
    from nbdt.wordnet import ancestors

    return [s["label"] for s in path if s["wnid"] and FELINE in ancestors(s["wnid"])]


@pytest.mark.slow
@pytest.mark.parametrize("tree", [None, "imagenet-wordnet"])
def test_example_model_sees_a_cat_in_chelsea(capsys, tmp_path, tree):
    import skimage.data

    from nbdt.wordnet import ancestors

    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    code, out, err = run(capsys, photo, "--json", *(["--hierarchy", tree] if tree else []))
    assert code == 0
    assert err.startswith("note: efficientnet_lite0 was trained on ImageNet without tree")
    [d] = json.loads(out)
    assert d["node_score"] == "marginal"
    assert FELINE in ancestors(d["wnid"]) and "cat" in d["label"]
    assert feline_ancestors(d["path"]), [s["label"] for s in d["path"]]
    code, out, _ = run(capsys, photo, "--top-k", 1)
    assert code == 0 and out.startswith("note: efficientnet_lite0")
    assert out.splitlines()[1].startswith(f"{photo}: Prediction: {d['label']} // Decisions: ")
