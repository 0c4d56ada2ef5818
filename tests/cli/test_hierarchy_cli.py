"""nbdt-hierarchy: every subcommand end to end, and bad input as one stderr line with exit 2."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from nbdt import builders
from nbdt.classes import dataset_classes
from nbdt.cli.hierarchy import _OPTION_FLAGS, parser
from nbdt.cli.hierarchy import main as hierarchy_main
from nbdt.hierarchy import Hierarchy


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = hierarchy_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_wordnet_prints_and_saves(capsys, tmp_path):
    out_file = tmp_path / "tree.json"
    code, out, err = run(capsys, "wordnet", "--dataset", "cifar10", "-o", str(out_file))
    assert (code, err) == (0, f"nbdt-hierarchy: wrote {out_file}\n")
    assert out.splitlines()[0] == "whole  (10 classes)"
    assert "        cat  (class 3)" in out.splitlines()
    assert Hierarchy.load(out_file) == builders.wordnet(dataset_classes("cifar10"))


def test_random_with_options(capsys, tmp_path):
    out_file = tmp_path / "random.json"
    code, out, _ = run(
        capsys, "random", "--dataset", "cifar10", "--seed", "3", "--branching", "3",
        "-o", str(out_file), "--quiet",
    )  # fmt: skip
    assert code == 0 and out == ""
    expected = builders.random(dataset_classes("cifar10"), seed=3, branching=3)
    assert Hierarchy.load(out_file) == expected


@pytest.mark.parametrize("kind", list(builders.BUILDERS))
def test_each_builder_command_has_the_flags_of_the_options_its_builder_takes(kind):
    commands = next(a for a in parser()._actions if a.dest == "command").choices
    flags = {o for a in commands[kind]._actions for o in a.option_strings}
    for option in _OPTION_FLAGS:
        flag = "--" + option.replace("_", "-")
        assert (flag in flags) == (option in builders.options(kind)), option
    assert set(builders.options(kind)) - {"wnids"} <= set(_OPTION_FLAGS)  # --wnids: a file


def test_induced_from_checkpoint_and_class_file(capsys, tmp_path):
    weights = 5 * torch.randn(2, 8)[[0, 0, 1, 1]] + 0.1 * torch.randn(
        4, 8
    )  # a trained head's pairs
    checkpoint = tmp_path / "model.pt"
    torch.save({"state_dict": {"head.weight": weights, "head.bias": torch.zeros(4)}}, checkpoint)
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\ncat\ndog\n\nship\ntruck\n")
    out_file = tmp_path / "tree.json"
    code, out, err = run(
        capsys, "induced", "--checkpoint", str(checkpoint), "--classes", str(classes),
        "--branching", "3", "-o", str(out_file),
    )  # fmt: skip
    assert (code, err) == (0, f"nbdt-hierarchy: wrote {out_file}\n")
    tree = Hierarchy.load(out_file)
    assert tree.classes == ("cat", "dog", "ship", "truck")
    assert tree == builders.induced(weights, ["cat", "dog", "ship", "truck"], branching=3)
    assert out.strip() == tree.render()


def test_show_file_and_shipped_name(capsys, tmp_path):
    code, out, _ = run(capsys, "show", "cifar10-wordnet", "--max-depth", "1")
    assert code == 0
    assert out.splitlines() == ["whole  (10 classes)", "  vehicle  (4 classes)",
                                "  vertebrate  (6 classes)"]  # fmt: skip
    path = tmp_path / "t.json"
    builders.wordnet(["cat", "dog", "ship"]).save(path)
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0 and "ship  (class 2)" in out


def test_show_reference_file_needs_a_class_order(capsys, tmp_path):
    tree = builders.wordnet(dataset_classes("cifar10"))
    data = tree.to_node_link()
    del data["graph"]["classes"]  # the reference's files carry no class order
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "show", str(path))
    assert code == 2
    assert err == (
        f"nbdt-hierarchy: error: {path}: the file has no class order: give --dataset or --classes\n"
    )
    code, out, _ = run(capsys, "show", str(path), "--dataset", "cifar10")
    assert code == 0 and out.strip() == tree.render()


def test_html_option_calls_the_visualizer(capsys, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("nbdt.visualize")
    fake.hierarchy_html = lambda tree, path, **kw: calls.append((tree, path)) or path
    monkeypatch.setitem(sys.modules, "nbdt.visualize", fake)
    code, _, _ = run(capsys, "wordnet", "--dataset", "fashion-mnist", "--html",
                     str(tmp_path / "t.html"), "--quiet")  # fmt: skip
    assert code == 0
    assert calls == [(builders.wordnet(dataset_classes("fashion-mnist")), tmp_path / "t.html")]


def test_unresolved_classes_warn_in_one_line(capsys, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\nqwxzy\n")
    code, _, err = run(capsys, "wordnet", "--classes", str(classes), "--quiet")
    assert code == 0
    assert err.startswith("nbdt-hierarchy: warning: no WordNet noun for classes ['qwxzy']")
    assert err.count("\n") == 1


def _checkpoint(tmp_path, rows: int):
    path = tmp_path / f"head{rows}.pt"
    torch.save({"fc.weight": torch.randn(rows, 3)}, path)
    return str(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["wordnet", "--classes", "{tmp}/missing.txt"], "{tmp}/missing.txt: No such file"),
        (["wordnet", "--classes", "{tmp}/one.txt"], "needs at least two class names"),
        (["wordnet", "--classes", "{tmp}/dup.txt"], "class 'cat' is listed twice"),
        (["wordnet", "--classes", "{tmp}/binary.txt"], "not a UTF-8 text file"),
        (["random", "--dataset", "cifar10", "--branching", "1"], "branching must be an integer"),
        (["wordnet", "--dataset", "cifar10", "-o", "{tmp}/no/dir/t.json"], "does not exist"),
        (["induced", "--dataset", "cifar10", "--checkpoint", "{tmp}/none.pt"], "no such file"),
        (["induced", "--dataset", "cifar10", "--checkpoint", "{tmp}/one.txt"], "not a readable"),
        (["induced", "--dataset", "cifar10", "--checkpoint", "{head5}"], "with 10 rows"),
        (["induced", "--dataset", "cifar10", "--model", "no_such_net", "--pretrained"],
         "--model no_such_net: not a timm architecture"),
        (["induced", "--dataset", "cifar10", "--model", "resnet18"],
         "--model needs --pretrained or --pretrained-file"),
        (["induced", "--dataset", "cifar10", "--model", "resnet18", "--pretrained-file",
          "{tmp}/none.pt"], "--pretrained-file {tmp}/none.pt: no such file"),
        (["induced", "--dataset", "cifar10", "--model", "resnet18", "--pretrained-file",
          "{head5}"], "head5.pt: does not fit resnet18 (--model)"),
        (["induced", "--dataset", "cifar10", "--checkpoint", "{head5}", "--pretrained"],
         "go with --model"),
        (["show", "{tmp}/none.json"], "no such hierarchy file or shipped hierarchy"),
        (["show", "{tmp}/one.txt"], "not a JSON hierarchy file"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    (tmp_path / "one.txt").write_text("cat\n")
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00cat")
    out_file = tmp_path / "out.json"
    fill = {"tmp": str(tmp_path), "head5": _checkpoint(tmp_path, 5)}
    argv = [a.format(**fill) for a in argv] + ["-o", str(out_file)] * ("-o" not in argv)
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("nbdt-hierarchy: error: ") and err.count("\n") == 1, err
    assert message.format(**fill) in err
    assert out == "" and not out_file.exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as error:
        hierarchy_main(["wordnet", "--dataset", "mnist"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        hierarchy_main(["induced", "--dataset", "cifar10"])  # no weights
    assert error.value.code == 2
    assert "one of the arguments --model --checkpoint is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["random", "--dataset", "cifar10", "--seed", "-1"],
        ["show", "cifar10-wordnet", "--max-depth", "-1"],
    ],
)
def test_negative_counts_are_refused_naming_the_option(capsys, argv):
    with pytest.raises(SystemExit) as error:
        hierarchy_main(argv)
    assert error.value.code == 2
    option = argv[-2]
    assert (
        f"argument {option}: expected a non-negative integer, got '-1'" in capsys.readouterr().err
    )
