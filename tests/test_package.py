"""Package-level contracts: a side-effect-free import, the public API, CLIs' help, lint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nbdt

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_is_cheap_and_silent():
    code = (
        "import sys, nbdt; print(sorted(m for m in ('torch', 'timm', 'nltk') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def test_the_explanation_format_needs_no_torch():
    code = (
        "import sys, nbdt; nbdt.Explanation.from_dict; import nbdt.explanation;"
        " print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", nbdt.__all__)
def test_public_names_resolve(name):
    assert getattr(nbdt, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nbdt.nope  # noqa: B018


def _scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: command -> "module:function"."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("command", sorted(_scripts()))
def test_every_command_is_installed_and_explains_itself(command):
    from importlib.metadata import entry_points

    target = _scripts()[command]
    module, _, function = target.partition(":")
    assert module == f"nbdt.cli.{module.rsplit('.', 1)[-1]}" and function == "main"
    installed = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert installed.get(command) == target  # `make setup` installed this pyproject
    out = subprocess.run([BIN / command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: " + command)


@pytest.mark.skipif(shutil.which("ruff", path=str(BIN)) is None, reason="ruff not installed")
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff_clean(args):
    out = subprocess.run([BIN / "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_test_files_have_unique_names_and_import_no_test_module():
    """pytest imports test files by their names, so two alike would clash; what tests share is
    a fixture (conftest.py) or a plain module (tests/helpers), never another test file."""
    import ast

    files = sorted((ROOT / "tests").rglob("*.py"))
    tests = [f for f in files if f.name.startswith("test_")]
    assert len({f.name for f in tests}) == len(tests)
    forbidden = {f.stem for f in tests} | {"conftest"}
    for file in files:
        nodes = list(ast.walk(ast.parse(file.read_text(encoding="utf-8"))))
        imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
        assert not {name.split(".")[0] for name in imported} & forbidden, file


def test_a_reader_that_leaves_early_is_no_error():
    pipe = subprocess.Popen(
        [BIN / "nbdt-hierarchy", "show", "imagenet-induced"],  # 100 kB: more than a pipe holds
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert pipe.stdout.readline().startswith(b"entity")
    pipe.stdout.close()  # like `| head -1`
    assert pipe.wait(timeout=60) == 0
    assert pipe.stderr.read() == b""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_bad_input_is_reported_once_under_torchrun(rank, tmp_path):
    env = {**os.environ, "RANK": rank}
    command = [BIN / "nbdt-hierarchy", "show", str(tmp_path / "missing.json")]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    expected = 1 if rank == "0" else 0  # only rank 0 speaks; every rank exits 2
    assert len(out.stderr.splitlines()) == expected


def test_an_error_from_a_dataloader_worker_reads_as_its_own_message():
    from nbdt._messages import one_line

    worker = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call"
        ' last):\n  File "x.py", line 1, in f\nValueError: data/dog/0.png: not an image file\n'
    )
    assert one_line(worker) == "data/dog/0.png: not an image file"
    assert one_line(ValueError("first line\nsecond")) == "first line"
    assert one_line(OSError()) == "OSError"


def test_cli_choices_come_from_the_tables():
    from nbdt import builders, data, loss
    from nbdt.cli.export import parser as export_parser
    from nbdt.cli.hierarchy import parser as hierarchy_parser
    from nbdt.cli.train import parser as train_parser
    from nbdt.model import MODES
    from nbdt.networks import PADDINGS
    from nbdt.rules import NODE_SCORES
    from nbdt.training.config import OPTIMIZERS

    def choices(parser):
        return {a.dest: a.choices for a in parser._actions if a.choices is not None}

    assert choices(train_parser()) == {
        "dataset": data.DATASETS, "node_score": NODE_SCORES, "loss": loss.LOSSES,
        "soft_variant": loss.SOFT_VARIANTS, "optimizer": OPTIMIZERS, "padding": PADDINGS,
    }  # fmt: skip
    commands = choices(hierarchy_parser())["command"]
    assert set(builders.BUILDERS) <= set(commands)
    assert choices(export_parser()) == {"mode": MODES, "node_score": NODE_SCORES}
    assert set(MODES) == {"soft", "hard"} and set(NODE_SCORES) == {"mean", "marginal"}


# One flag for one thing in every command: -o/--output, former spellings as hidden aliases.
_OUTPUT_FLAGS = [
    ("hierarchy", ["wordnet", "--dataset", "cifar10"], ["--out"]),
    ("hierarchy", ["show", "t.json"], ["--out"]),
    ("hierarchy", ["html", "t.json"], []),
    ("hierarchy", ["edit", "t.json", "edits.txt"], []),
    ("train", [], []),
    ("explain", ["x.png"], ["--html"]),
    ("evaluate", ["m.pt"], ["--out"]),
    ("examples", ["m.pt"], []),
    ("fix", ["m.pt"], []),
    ("export", ["m.pt"], []),
    ("compress", ["m.pt"], []),
]


@pytest.mark.parametrize("command, argv, aliases", _OUTPUT_FLAGS)
def test_every_command_writes_to_dash_o_and_keeps_its_old_spelling(command, argv, aliases):
    import importlib
    import re

    parser = importlib.import_module(f"nbdt.cli.{command}").parser()
    for flag in ("-o", "--output", *aliases):
        assert parser.parse_args([*argv, flag, "OUT"]).output == "OUT", flag
    shown = parser.format_help() if command != "hierarchy" else ""
    for alias in aliases:  # accepted, not advertised
        assert not re.search(rf"{alias}\b", shown)


def test_the_choice_checker_names_the_option_and_the_table():
    from nbdt.choices import check_choice
    from nbdt.model import MODES
    from nbdt.rules import NODE_SCORES
    from nbdt.training.config import TrainConfig

    message = "--node-score must be one of mean, marginal, got 'x'"
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_choice("--node-score", "x", NODE_SCORES)
    with pytest.raises(ValueError, match=f"^{message}$"):
        TrainConfig(output="unused", node_score="x").validate()
    with pytest.raises(ValueError, match="^mode must be one of soft, hard, got"):
        check_choice("mode", ["soft"], MODES)  # an unhashable value is in no table
    check_choice("mode", "hard", MODES)


def test_eval_takes_the_dataset_its_checkpoint_records(stripes_dir, tiny_nbdt, tmp_path, capsys):
    import json

    import torch

    from nbdt.checkpoint import read_checkpoint
    from nbdt.classes import dataset_classes
    from nbdt.cli._common import recorded_data
    from nbdt.cli.evaluate import main as eval_main

    def untrained_fashion_model(folder: Path) -> Path:
        """An untrained test_resnet NBDT over Fashion-MNIST's classes, saved by NBDT.save."""
        tree = nbdt.Hierarchy.random(list(dataset_classes("fashion-mnist").names), seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        return tiny_nbdt(tree).save(folder / "best.pt")

    saved = untrained_fashion_model(tmp_path / "saved")
    argv = ["--subset", "20", "--no-report", "--out", str(tmp_path / "eval")]  # the old spelling
    assert eval_main([str(saved), *argv]) == 2  # NBDT.save records no run
    err = capsys.readouterr().err
    assert "records no dataset" in err and "pass --dataset" in err and err.count("\n") == 1

    run = untrained_fashion_model(tmp_path / "run")
    recorded = {"dataset": "fashion-mnist", "data_dir": str(stripes_dir)}
    (run.parent / "args.json").write_text(json.dumps({**recorded, "epochs": 1}))
    assert eval_main([str(run), *argv]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["images"] == 20

    state = read_checkpoint(saved)  # without args.json: the checkpoint's own training state
    state["train"] = {"epoch": 1, "config": {**recorded, "epochs": 1}}
    torch.save(state, saved)
    assert recorded_data(saved) == recorded
