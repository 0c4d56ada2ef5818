"""A user's first hour: progress in every long command (a bar on a terminal, timed lines with the
time left in a log), short summaries, safe defaults (no prefix matching, every default in
--help, timm's flag names, a loud warning for an unfine-tuned pruned model), and NBDT's
scikit-learn-style conveniences and grad-cam's method names."""

from __future__ import annotations

import argparse
import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import nbdt
from nbdt import data
from nbdt.cli import _common
from nbdt.cli import compress as compress_cli
from nbdt.cli import evaluate as evaluate_cli
from nbdt.cli import examples as examples_cli
from nbdt.cli import explain as explain_cli
from nbdt.cli import export as export_cli
from nbdt.cli import fix as fix_cli
from nbdt.cli import hierarchy as hierarchy_cli
from nbdt.cli import train as train_cli
from nbdt.deploy.compress import Compressed
from nbdt.progress import Progress, duration

ARCH = "test_efficientnet_gn"
COMMANDS = [compress_cli, evaluate_cli, examples_cli, explain_cli, export_cli, fix_cli]
COMMANDS += [hierarchy_cli, train_cli]
LEFT = re.compile(r"\d+/\d+ \w+ \(\d+%\), .* so far, about .* left")


@pytest.fixture(scope="module")
def tiny_model(stripes_dir, tmp_path_factory) -> Path:
    """An untrained tiny NBDT over the stripes classes, saved as a model file."""
    from nbdt.builders import UntrainedHeadWarning
    from nbdt.training.config import TrainConfig
    from nbdt.training.plan import make_plan

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = TrainConfig(output=str(folder / "run"), arch=ARCH, data_dir=str(stripes_dir))
    plan = make_plan(config, torch.device("cpu"))
    network, kwargs = plan.network()
    with warnings.catch_warnings():  # the tree of an untrained head: a test model's
        warnings.simplefilter("ignore", UntrainedHeadWarning)
        tree = nbdt.Hierarchy.build("induced", plan.classes, weights=network)
    model = nbdt.NBDT(
        network, tree, arch=ARCH, model_kwargs=kwargs,
        data_config=plan.data_config(network, kwargs),
    )  # fmt: skip
    return model.save(folder / "tiny.pt")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------------------- progress
def test_log_progress_has_a_first_line_then_one_per_interval_with_the_time_left(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 40.0, 41.0, 45.0, 80.0])
    monkeypatch.setattr("nbdt.progress.time.monotonic", lambda: next(clock))
    log = io.StringIO()
    bar = Progress(stream=log).bar(10, "eval", "batch")
    for _ in range(5):
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "eval: 1/10 batches (10%), 1 s so far, about 9 s left"
    assert lines[1] == "eval: 3/10 batches (30%), 40 s so far, about 1 min 33 s left"
    assert lines[2] == "eval: 5 batches in 1 min 20 s" and len(lines) == 3


def test_progress_is_a_bar_on_a_terminal_and_nothing_when_quiet():
    terminal = _Terminal()
    shown = Progress(stream=terminal)
    assert shown.bars and not shown.log
    assert list(shown.track(range(3), 3, "x")) == [0, 1, 2]
    assert "x" in terminal.getvalue()  # tqdm drew on the terminal stream
    quiet = io.StringIO()
    assert Progress(quiet=True, stream=quiet).bar(3, "x") is None
    assert list(Progress(quiet=True, stream=quiet).track(range(3), 3, "x")) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_estimate_is_printed_once_after_the_first_steps(monkeypatch, capsys):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr("nbdt.progress.time.monotonic", lambda: next(clock))
    progress = Progress(stream=io.StringIO())
    progress.estimate(15, "training epoch")
    for _ in range(2):
        bar = progress.bar(100, "epoch", "step")
        for _ in range(10):
            bar.update()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "measured on 5 steps: one training epoch takes about 1 min 40 s (100 steps),"
        " all 15 about 25 min 0 s plus evaluation"
    ]
    assert duration(3 * 3600 + 125) == "3 h 2 min"


def test_eval_off_a_terminal_logs_progress_with_the_time_left(capsys, tiny_model, stripes_dir):
    code = evaluate_cli.main(
        [str(tiny_model), "--data-dir", str(stripes_dir), "--dataset", "fashion-mnist",
         "-o", "unused", "--no-report", "-b", "32", "--output", str(Path(tiny_model).parent / "e")]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert LEFT.search(err) and "eval: 5 batches in" in err
    assert "wrote" in out


def test_examples_subset_and_progress(capsys, tiny_model, stripes_dir, tmp_path):
    out_file = tmp_path / "ex.npz"
    code = examples_cli.main(
        [str(tiny_model), "--data-dir", str(stripes_dir), "--dataset", "fashion-mnist",
         "-o", str(out_file), "--subset", "40", "-b", "16", "-k", "2", "--sample", "8"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "node examples: 1/3 batches" in err and "node examples: 3 batches in" in err
    from nbdt.evidence.examples import NodeExamples

    assert len(NodeExamples.load(out_file).sample_index) == 8


def test_train_says_what_it_will_do_and_how_long_an_epoch_takes(capsys, stripes_dir, tmp_path):
    code = train_cli.main(
        ["--model", ARCH, "--data-dir", str(stripes_dir), "-o", str(tmp_path / "run"),
         "--warmup-epochs", "1", "--epochs", "0", "-b", "32", "--eval-subset", "32",
         "--no-report", "--no-examples"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"training {ARCH} on 320 fashion-mnist images, 1 warm-up + 0 tree")
    assert "evaluating 32 test images per epoch" in lines[0]
    assert lines[1].startswith("measured on 5 steps: one training epoch takes about")
    assert lines[2].startswith("epoch 1/1 warmup")  # the estimate came before the epoch ended
    assert LEFT.search(err)


def test_explain_of_many_images_logs_progress_and_keeps_json_clean(
    capsys, tiny_model, stripes_dir, tmp_path
):
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    files = []
    for i in range(20):  # two batches of nbdt-explain
        files.append(tmp_path / f"{i}.png")
        data.to_pil(test_set[i][0]).save(files[-1])
    assert explain_cli.main([*map(str, files), "--checkpoint", str(tiny_model), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 20
    assert "explain: 1/2 batches (50%)" in err and "explain: 2 batches in" in err


# ---------------------------------------------------------------------------- nbdt-fix
def test_fix_prints_a_summary_and_json_on_request(capsys, tiny_model, stripes_dir, tmp_path):
    folders = tmp_path / "corrections"
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    for i in range(40):
        image, target = test_set[i]
        name = test_set.classes[int(target)].replace("/", "_")  # T-shirt/top -> T-shirt_top
        (folders / name).mkdir(parents=True, exist_ok=True)
        data.to_pil(image).save(folders / name / f"{i}.png")
    argv = [str(tiny_model), "--corrections", str(folders), "--data-dir", str(stripes_dir),
            "--subset", "64", "--eval-subset", "32", "--epochs", "1"]  # fmt: skip
    assert fix_cli.main([*argv, "-o", str(tmp_path / "a.pt")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) <= 8 and out.splitlines()[-1] == f"wrote {tmp_path / 'a.pt'}"
    assert re.search(r"  corrections +\d+ images  network [\d.]+%, NBDT soft [\d.]+% -> ", out)
    assert LEFT.search(err) or "features: " in err
    assert fix_cli.main([*argv, "-o", str(tmp_path / "b.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = re.findall(r"\d+\.\d+", json.dumps(report))
    assert numbers and all(len(n.split(".")[1]) <= 4 for n in numbers)
    assert report["corrections"]["before"]["corrections"]["images"] > 0


def test_a_correction_folder_with_a_wrong_name_says_how_to_name_it(
    capsys, tiny_model, stripes_dir, tmp_path
):
    (tmp_path / "c" / "T-shirt top").mkdir(parents=True)
    argv = [str(tiny_model), "--corrections", str(tmp_path / "c"), "--data-dir", str(stripes_dir)]
    assert fix_cli.main([*argv, "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "T-shirt/top -> T-shirt_top" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------- nbdt-hierarchy
def test_hierarchy_html_and_edit_say_what_they_wrote(capsys, tmp_path):
    page = tmp_path / "h.html"
    assert hierarchy_cli.main(["html", "fashion-mnist-wordnet", "-o", str(page), "--highlight",
                               "Sandal"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {page} (10 classes, ") and "'Sandal'" in out
    assert "highlighted" in out
    rules = tmp_path / "edits.txt"
    rules.write_text("")
    code = hierarchy_cli.main(
        ["edit", "fashion-mnist-wordnet", str(rules), "-o", str(tmp_path / "n.json"),
         "--html", str(tmp_path / "n.html"), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"wrote {tmp_path / 'n.json'} and {tmp_path / 'n.html'}" in err


# ------------------------------------------------------------------------ safe defaults
@pytest.mark.parametrize("command", COMMANDS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_no_prefix_matching_and_every_default_in_help(command):
    parser = command.parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    for p in parsers:
        assert not p.allow_abbrev, p.prog
        formatter = p._get_formatter()
        for action in p._actions:
            if action.option_strings and action.nargs != 0 and action.default not in (None, []):
                shown = formatter._get_help_string(action) % {"default": action.default}
                assert "default" in shown, (p.prog, action.option_strings)


def test_a_mistyped_prefix_is_an_error_not_another_option(capsys):
    with pytest.raises(SystemExit) as stopped:
        train_cli.parser().parse_args(["-o", "x", "--opt", "adamw"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --opt adamw" in capsys.readouterr().err


def test_help_names_the_defaults_the_issue_found_missing(capsys):
    examples_help = examples_cli.parser().format_help()
    assert "(default: 8)" in examples_help and "(default: 4096)" in examples_help
    compress_help = " ".join(compress_cli.parser().format_help().split())
    assert "train images (default: 256)" in compress_help
    assert "test images (default: 2000)" in compress_help


def test_timm_style_aliases():
    args = train_cli.parser().parse_args(["-o", "x", "--model", "resnet18", "-b", "16"])
    assert args.arch == "resnet18" and args.batch_size == 16
    for command in (evaluate_cli, examples_cli, compress_cli, fix_cli):
        args = command.parser().parse_args(["m.pt", "-o", "x", "-b", "8"])
        assert args.batch_size == 8
    args = hierarchy_cli.parser().parse_args(["induced", "--arch", "resnet18", "--classes", "a"])
    assert args.model == "resnet18"


def _compressed(tmp_path, pruned_soft: float) -> Compressed:
    def row(soft, path):
        return {"nbdt_soft_top1": soft, "agreement": {"path": path}}

    rows = {"uncompressed": row(87.3, 1.0), "pruned": row(pruned_soft, 0.057)}
    return Compressed(tmp_path, {}, rows)


def test_pruning_without_finetuning_warns_with_the_measured_drop(tmp_path, monkeypatch, capsys):
    result = _compressed(tmp_path, 13.1)
    warning = result.unfinetuned_warning(0)
    assert "lost 74.2 points of NBDT soft top-1 (87.3% -> 13.1%)" in warning
    assert "keeps 5.7% of decision paths" in warning and "--finetune-epochs" in warning
    assert result.unfinetuned_warning(2) is None
    assert _compressed(tmp_path, 86.9).unfinetuned_warning(0) is None
    monkeypatch.setattr("nbdt.deploy.compress.compress", lambda *a, **k: result)
    monkeypatch.setattr(Compressed, "table", lambda self: "TABLE")
    assert compress_cli.main(["m.pt", "-o", str(tmp_path), "--prune", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("nbdt-compress: WARNING: pruned without fine-tuning")
    assert out.splitlines() == ["TABLE", f"nbdt-compress: wrote {tmp_path}"]


# ------------------------------------------------------------- scikit-learn conveniences
def test_classes_predict_and_predict_proba(tiny_model, stripes_dir):
    model = nbdt.load(tiny_model)
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    pictures = [data.to_pil(test_set[i][0]) for i in range(5)]
    assert model.classes == list(model.hierarchy.classes) and model.classes[0] == "T-shirt/top"
    proba = model.predict_proba(pictures, batch_size=2)
    assert proba.shape == (5, 10) and torch.allclose(proba.sum(1), torch.ones(5), atol=1e-5)
    names = model.predict(pictures)
    indices = model.predict(pictures, indices=True)
    assert names == [model.classes[i] for i in indices.tolist()]
    assert names == [e.label for e in model.explain(pictures)]
    assert model.predict(pictures[0]) == names[:1]
    model.mode = "hard"
    hard = model.predict_proba(pictures)
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and (hard.sum(1) == 1).all()
    assert model.predict(pictures) == [e.label for e in model.explain(pictures)]
    with pytest.raises(ValueError, match="predict: no input"):
        model.predict([])


def test_cam_methods_as_grad_cam_spells_them():
    from nbdt.evidence.saliency import CAM_METHODS, cam_class, method_name

    assert "gradcamelementwise" in CAM_METHODS and "gradcam-elementwise" not in CAM_METHODS
    assert method_name("gradcam-elementwise") == "gradcamelementwise"
    assert method_name("HiResCAM") == "hirescam"
    assert cam_class("gradcam-elementwise") is cam_class("gradcamelementwise")
    parse = explain_cli.parser().parse_args
    for spelling in ("gradcamelementwise", "gradcam-elementwise"):
        assert parse(["m.pt", "i.png", "--method", spelling]).method == "gradcamelementwise"


def test_the_parser_factory_is_the_one_every_command_uses():
    for command in COMMANDS:
        assert isinstance(command.parser(), _common.Parser)
