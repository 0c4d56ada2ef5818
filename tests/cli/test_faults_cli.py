"""The command lines' faults: inputs overwritten, raw labels on the terminal, NaN models,
silent clamps and silent fallbacks."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from nbdt.cli.explain import main as explain_main
from nbdt.cli.hierarchy import main as hierarchy_main
from nbdt.hierarchy import Hierarchy, Node
from nbdt.model import NBDT
from nbdt.training import loop as training_loop

CLASSES = ["cat", "dog", "car", "ship"]
EVIL = ["\x1b[31mcat", "dog\u202e", "car", "ship"]


def tree(labels=CLASSES) -> Hierarchy:
    inner = [
        Node("root", "entity", None, ("animal", "vehicle")),
        Node("animal", "ani\x1b]0;title\x07mal", None, ("cat", "dog")),
        Node("vehicle", "vehicle", None, ("car", "ship")),
    ]
    return Hierarchy(
        [*inner, *(Node(c, label) for c, label in zip(CLASSES, labels, strict=True))], CLASSES
    )


def run(main, capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_file(tiny_nbdt, tmp_path_factory):
    return tiny_nbdt(tree(EVIL), size=None).save(tmp_path_factory.mktemp("m") / "evil.pt")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "victim.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ 2: NaN at the command line
def test_a_nan_model_is_one_error_line_naming_the_image(tmp_path, image, capsys):
    net = timm.create_model("test_resnet", num_classes=4)
    model = NBDT(net, tree())
    path = model.save(tmp_path / "nan.pt")
    checkpoint = torch.load(path, weights_only=True)
    bias = next(k for k in checkpoint["state_dict"] if k.endswith("fc.bias"))
    checkpoint["state_dict"][bias][0] = float("nan")
    torch.save(checkpoint, path)
    code, out, err = run(explain_main, capsys, image, "--checkpoint", path)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(image) in err and "not finite" in err


# ------------------------------------------------------------------ 13: inputs are not outputs
def test_html_over_an_input_is_refused(image, model_file, capsys):
    before = image.read_bytes()
    code, _, err = run(explain_main, capsys, image, "--checkpoint", model_file, "-o", image)
    assert code == 2 and "--output" in err and "input" in err
    assert image.read_bytes() == before


def test_a_hierarchy_page_over_its_tree_file_is_refused(tmp_path, capsys):
    path = tree().save(tmp_path / "tree.json")
    before = path.read_bytes()
    code, _, err = run(hierarchy_main, capsys, "html", path, "-o", path)
    assert code == 2 and "input" in err and path.read_bytes() == before


# ------------------------------------------------------------------ 14: labels on the terminal
def test_control_and_bidi_characters_are_escaped_on_the_terminal(image, model_file, capsys):
    code, out, _ = run(explain_main, capsys, image, "--checkpoint", model_file, "--top-k", "4")
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b[31mcat" in out and "dog\\u202e" in out
    tree_file = tree(EVIL).save(image.parent / "evil.json")
    code, out, _ = run(hierarchy_main, capsys, "show", tree_file)
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and "\\x1b[31mcat" in out


def test_terminal_escaping_keeps_ordinary_text():
    from nbdt._messages import for_terminal

    assert for_terminal("Éclair — 東京 tab\there") == "Éclair — 東京 tab\\x09here"
    assert for_terminal("a\x1b[2Jb\u2066c\x9bd") == "a\\x1b[2Jb\\u2066c\\x9bd"


def test_labels_are_bidi_isolated_in_the_pages(tmp_path):
    from nbdt.visualize import hierarchy_html

    page = hierarchy_html(tree(EVIL), tmp_path / "t.html").read_text()
    assert "unicode-bidi: isolate" in page


# ------------------------------------------------------------------ smaller
def test_top_k_beyond_the_class_count_is_refused(image, model_file, capsys):
    code, _, err = run(explain_main, capsys, image, "--checkpoint", model_file, "--top-k", "99999")
    assert code == 2 and "--top-k 99999" in err and "4 classes" in err
    code, out, _ = run(explain_main, capsys, image, "--checkpoint", model_file)  # default 5
    assert code == 0 and "top-4:" in out


def test_hierarchy_files_written_are_reported(tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\ncar\n")
    out_json, out_html = tmp_path / "t.json", tmp_path / "t.html"
    code, _, err = run(
        hierarchy_main, capsys, "wordnet", "--classes", classes, "-o", out_json,
        "--html", out_html, "--quiet",
    )  # fmt: skip
    assert code == 0 and f"wrote {out_json}" in err and f"wrote {out_html}" in err


def test_every_hierarchy_option_has_help():
    from nbdt.cli.hierarchy import parser

    commands = parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"nbdt-hierarchy {name} {action.option_strings} has no help"


# ------------------------------------------------------------------ 6: guessed class senses
def test_guessed_class_senses_are_reported_and_overridable(tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("T-shirt or top\ncat\ndog\n")
    code, _, err = run(hierarchy_main, capsys, "wordnet", "--classes", classes, "--quiet")
    assert code == 0
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "'T-shirt or top' -> n08663860 top.n.01" in notes[0]
    assert "the upper part of anything" in notes[0] and "'last words'" in notes[0]
    overrides = tmp_path / "wnids.tsv"
    overrides.write_text("# name<TAB>wnid\nT-shirt or top\tn03595614\n")
    out_json = tmp_path / "t.json"
    code, _, err = run(
        hierarchy_main, capsys, "wordnet", "--classes", classes, "--wnids", overrides,
        "-o", out_json, "--quiet",
    )  # fmt: skip
    assert code == 0 and "note:" not in err
    assert Hierarchy.load(out_json).leaves[0].wnid == "n03595614"
    overrides.write_text("T-shirt or top n03595614\n")
    code, _, err = run(
        hierarchy_main, capsys, "wordnet", "--classes", classes, "--wnids", overrides
    )
    assert code == 2 and "wnids.tsv:1" in err


def test_nbdt_train_reports_guessed_class_senses_in_its_output_and_args_json(
    tmp_path, monkeypatch, capsys
):

    from nbdt.cli.train import main as train_main

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("T-shirt or top", "cat"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (16, 16, 3), np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "train_one_epoch", stop)
    output = tmp_path / "run"
    code, out, _ = run(
        train_main, capsys, "--arch", "test_resnet", "--dataset", "folder", "--data-dir",
        tmp_path / "data", "--output", output, "--image-size", "16", "--batch-size", "4",
        "--quiet", "--workers", "0",
    )  # fmt: skip
    assert code == 130
    assert "class name guessed: 'T-shirt or top' -> n08663860 top.n.01" in out
    args = json.loads((output / "args.json").read_text())
    assert len(args["class_guesses"]) == 1 and "top.n.01" in args["class_guesses"][0]
