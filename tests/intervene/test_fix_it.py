"""Fixing a model without retraining, end to end at the command line: `nbdt-hierarchy edit`,
`nbdt-train --head-only`, `nbdt-fix --corrections / --add-class`, and their bad input (one line
with the edit file's line number where there is one, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nbdt
from nbdt import data, edits, intervene
from nbdt.cli.fix import main
from nbdt.cli.hierarchy import main as hierarchy_main
from nbdt.cli.train import main as train_main
from nbdt.features import cache_features
from nbdt.heads import FeatureHead
from nbdt.hierarchy import Hierarchy
from nbdt.training.config import TrainConfig
from nbdt.training.finetune import finetune
from nbdt.training.loop import LossDiverged
from nbdt.training.plan import Plan
from nbdt.training.run import train

BIN = Path(sys.executable).parent


def cli(capsys, main, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def image_folders(stripes_dir, tmp_path_factory) -> Path:
    """Test images as PNG files, DIR/<class>/<i>.png (T-shirt/top under its WordNet id)."""
    root = tmp_path_factory.mktemp("images")
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    for i in range(len(test_set)):
        image, target = test_set[i]
        name = test_set.classes[int(target)]
        folder = root / (test_set.wnids[int(target)] if "/" in name else name)
        folder.mkdir(exist_ok=True)
        data.to_pil(image).save(folder / f"{i}.png")
    return root


# ------------------------------------------------------------------ nbdt-hierarchy edit
def test_edit_writes_the_tree_and_a_page_marking_what_moved(capsys, tmp_path):
    rules = tmp_path / "edits.txt"
    rules.write_text('# boots go with bags\nmove "Ankle boot" -> artifact\n')
    code, out, err = cli(
        capsys, hierarchy_main, "edit", "fashion-mnist-wordnet", rules,
        "-o", tmp_path / "new.json", "--html", tmp_path / "new.html",
    )  # fmt: skip
    assert code == 0, err
    new = Hierarchy.load(tmp_path / "new.json")
    assert new.parent(new.class_ids[9]).id == new.root.id  # Ankle boot under the root
    assert out.splitlines()[0].startswith("artifact")
    moved = edits.moved_nodes(nbdt.pretrained.load_hierarchy("fashion-mnist-wordnet"), new)
    assert new.class_ids[9] in moved
    page = (tmp_path / "new.html").read_text()
    shown = json.loads(page.split('id="nbdt-data">')[1].split("</script>")[0])
    assert [i for i, m in zip(shown["id"], shown["moved"], strict=True) if m] == [
        n.id for n in new.nodes if n.id in moved
    ]
    assert 'id="moved-key"' in page


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("move nothing -> artifact", "no node 'nothing'"),
        ("move footwear -> shoe", "cycle"),
        ("move Sandal -> Sneaker", "not an inner node"),
        ("ungroup Sandal", "Sandal"),
        ('move "Ankle boot" ->', "expected"),
    ],
)
def test_edit_bad_lines_name_their_line_and_write_nothing(capsys, tmp_path, text, message):
    rules = tmp_path / "edits.txt"
    rules.write_text(f"# first\nrename clothing -> clothes\n{text}\n")
    code, out, err = cli(
        capsys, hierarchy_main, "edit", "fashion-mnist-wordnet", rules,
        "-o", tmp_path / "new.json", "--html", tmp_path / "new.html",
    )  # fmt: skip
    line = one_error_line(err, "nbdt-hierarchy")
    assert code == 2 and out == ""
    assert f"{rules}:3: " in line and message in line
    assert list(tmp_path.iterdir()) == [rules]


# ------------------------------------------------------------------ nbdt-train --head-only
def test_head_only_refits_the_head_alone_and_writes_the_run_folder(
    capsys, stripes_checkpoint, stripes_dir, tmp_path
):
    before = nbdt.load(stripes_checkpoint)
    rules = tmp_path / "edits.txt"
    rules.write_text(f"move Sandal -> {before.hierarchy.root.id}\n")
    tree = before.hierarchy.save(tmp_path / "tree.json")
    edited = cli(
        capsys, hierarchy_main, "edit", tree, rules, "-o", tmp_path / "new.json", "--quiet"
    )
    assert edited[0] == 0, edited[2]
    code, out, err = cli(
        capsys, train_main, "--checkpoint", stripes_checkpoint,
        "--hierarchy", tmp_path / "new.json", "--head-only", "--data-dir", stripes_dir,
        "--output", tmp_path / "run", "--epochs", "2", "--batch-size", "32", "--lr", "0.05",
        "--quiet", "--explain", "1",
    )  # fmt: skip
    assert code == 0, err
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "args.json", "last.pt", "best.pt", "metrics.jsonl", "hierarchy.json", "hierarchy.html",
        "explanations.json", "explanations.html", "images", "eval.json", "report.html",
    }  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"], r["train_images"], r["test_images"]) for r in rows] == [
        (1, "head", 320, 160),
        (2, "head", 320, 160),
    ]
    assert json.loads((run / "args.json").read_text())["head_only"] is True
    after = nbdt.load(run / "last.pt")
    assert after.hierarchy == Hierarchy.load(tmp_path / "new.json")
    head = before.model.pretrained_cfg["classifier"]
    old, new = before.model.state_dict(), after.model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    # The reported accuracy is the saved model's on the test images.
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    features = cache_features(after, test_set)
    scores = intervene.evaluate_features(after, features.features, features.targets)
    assert rows[-1]["top1"] == pytest.approx(scores["top1"], abs=1e-3)
    assert rows[-1]["nbdt_soft_top1"] == pytest.approx(scores["nbdt_soft_top1"], abs=1e-3)
    assert not list(run.glob("features-*"))


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_head_only_and_finetune_run_one_epoch_loop(
    capsys, stripes_checkpoint, stripes_dir, tmp_path
):
    """nbdt-train, --head-only and fine-tuning (nbdt-compress's) run the one epoch loop: the
    same metrics.jsonl row keys, the same per-epoch line, best.pt and the history in last.pt."""
    common = ["--data-dir", stripes_dir, "--batch-size", "32", "--lr", "0.05", "--quiet",
              "--no-report", "--no-examples", "--epochs", "1"]  # fmt: skip
    for name, extra in {"train": ["--warmup-epochs", "0"], "head": ["--head-only"]}.items():
        code, out, err = cli(
            capsys, train_main, "--checkpoint", stripes_checkpoint, "--hierarchy", "checkpoint",
            "--output", tmp_path / name, *common, *extra,
        )  # fmt: skip
        assert code == 0, err
        phase = "tree" if name == "train" else "head"
        assert f"epoch 1/1 {phase:<6} train loss" in out
    config = TrainConfig(
        output=str(tmp_path / "finetune"), checkpoint=str(stripes_checkpoint),
        hierarchy="checkpoint", data_dir=str(stripes_dir), warmup_epochs=0, epochs=1,
        batch_size=32, lr=0.05, quiet=True, report=False, examples=False,
    )  # fmt: skip
    _, history = finetune(config)
    assert "epoch 1/1 finetune train loss" in capsys.readouterr().out
    rows = {name: read_rows(tmp_path / name) for name in ("train", "head", "finetune")}
    assert rows["finetune"] == history
    assert [r["phase"] for r in rows.values() for r in r] == ["tree", "head", "finetune"]
    assert set(rows["head"][0]) == set(rows["finetune"][0]) == set(rows["train"][0])
    for name in rows:
        state = torch.load(tmp_path / name / "last.pt", weights_only=True)["train"]
        assert state["history"] == rows[name] and state["best"]["epoch"] == 1, name
        assert (tmp_path / name / "best.pt").is_file()


@pytest.mark.parametrize("kind", ["head-only", "finetune"])
def test_a_nan_loss_stops_head_only_and_finetune_keeping_the_last_good_epoch(
    kind, monkeypatch, capsys, stripes_checkpoint, stripes_dir, tmp_path
):
    original = Plan.criterion

    def criterion(plan, epoch, *args):
        loss = original(plan, epoch, *args)
        if epoch == 1:
            return lambda logits, target, *rest: loss(logits, target) * float("nan")
        return loss

    monkeypatch.setattr(Plan, "criterion", criterion)
    run = tmp_path / "run"
    config = TrainConfig(
        output=str(run), checkpoint=str(stripes_checkpoint), hierarchy="checkpoint",
        data_dir=str(stripes_dir), warmup_epochs=0, epochs=2, batch_size=32, lr=0.05, quiet=True,
        head_only=kind == "head-only",
    )  # fmt: skip
    with pytest.raises(LossDiverged) as stopped:
        train(config) if kind == "head-only" else finetune(config)
    assert str(stopped.value).endswith(
        f": stopped; {run / 'last.pt'} holds the last good epoch, 1; try a lower --lr"
    )
    assert "loss became nan in" in str(stopped.value)
    assert "epoch 1/2" in capsys.readouterr().out  # the first epoch's line came out
    assert [r["epoch"] for r in read_rows(run)] == [1]
    assert torch.load(run / "last.pt", weights_only=True)["train"]["epoch"] == 1


def test_head_only_needs_a_checkpoint(capsys, stripes_dir, tmp_path):
    code, _, err = cli(
        capsys, train_main, "--head-only", "--data-dir", stripes_dir, "--output", tmp_path / "r"
    )
    assert code == 2 and "--checkpoint" in one_error_line(err, "nbdt-train")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_head_only_under_torchrun(stripes_checkpoint, stripes_dir, tmp_path):
    result = subprocess.run(
        [
            BIN / "torchrun", "--standalone", "--nproc_per_node", "2", BIN / "nbdt-train",
            "--checkpoint", stripes_checkpoint, "--head-only", "--data-dir", stripes_dir,
            "--output", tmp_path / "run", "--epochs", "1", "--batch-size", "32", "--quiet",
        ],
        capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert (row["train_images"], row["test_images"]) == (320, 160)
    before, after = nbdt.load(stripes_checkpoint), nbdt.load(tmp_path / "run" / "best.pt")
    head = before.model.pretrained_cfg["classifier"]
    old, new = before.model.state_dict(), after.model.state_dict()
    assert {k for k in old if not torch.equal(old[k], new[k])} == {f"{head}.weight", f"{head}.bias"}


# ------------------------------------------------------------------------------ nbdt-fix
def test_fix_corrections_end_to_end(
    capsys, stripes_checkpoint, stripes_dir, image_folders, tmp_path
):
    code, out, err = cli(
        capsys, main, stripes_checkpoint, "--corrections", image_folders,
        "-o", tmp_path / "fixed.pt", "--data-dir", stripes_dir, "--epochs", "30",
        "--lr", "0.01", "--batch-size", "64", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)["corrections"]
    assert report["before"]["corrections"]["images"] == 120
    assert report["before"]["held_out"]["images"] == 40
    assert report["before"]["test"]["images"] == 160
    fitted = report["after"]["corrections"]["top1"]
    assert fitted > report["before"]["corrections"]["top1"] + 20
    fixed = nbdt.load(tmp_path / "fixed.pt")
    assert fixed.hierarchy == nbdt.load(stripes_checkpoint).hierarchy
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    features = cache_features(fixed, test_set)
    after = intervene.evaluate_features(fixed, features.features, features.targets)
    assert after["top1"] == pytest.approx(report["after"]["test"]["top1"], abs=1e-3)


def test_fix_adds_a_class_that_reloads_and_explains(
    capsys, stripes_checkpoint, stripes_dir, image_folders, tmp_path
):
    model = nbdt.load(stripes_checkpoint)
    without = model.with_hierarchy(model.hierarchy.remove_class("Ankle boot"))
    without.save(tmp_path / "nine.pt")
    code, out, err = cli(
        capsys, main, tmp_path / "nine.pt",
        "--add-class", f"Ankle boot={image_folders / 'Ankle boot'}",
        "-o", tmp_path / "ten.pt", "--data-dir", stripes_dir, "--epochs", "20", "--lr", "0.01",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    (added,) = json.loads(out)["added"]
    assert added["class"] == "Ankle boot" and added["images"] == 16
    assert added["own_images"]["top1"] >= 30  # chance: 10%; an untrained backbone
    grown = nbdt.load(tmp_path / "ten.pt")
    assert grown.hierarchy.classes[-1] == "Ankle boot" and grown.hierarchy.num_classes == 10
    explanation = grown.explain(sorted((image_folders / "Ankle boot").iterdir())[0])
    assert explanation.to_dict()["path"]


def test_imprinted_class_does_not_swamp_the_old_ones(stripes_checkpoint, stripes_dir):
    """Without a refit, the calibrated bias keeps old classes' replay images on their class."""
    model = nbdt.load(stripes_checkpoint)
    without = model.with_hierarchy(model.hierarchy.remove_class("Ankle boot"))
    train_set = data.load_dataset("fashion-mnist", "train", stripes_dir)
    replay = cache_features(
        without, intervene.known_classes(train_set, without.hierarchy, holdout=["Ankle boot"])
    )
    boots = train_set.images[train_set.targets == 9]
    plain = intervene.add_class(without, "Ankle boot", boots, epochs=0)
    calibrated = intervene.add_class(without, "Ankle boot", boots, replay=replay, epochs=0)
    new = torch.full((len(replay),), 9)
    takes = {
        name: 100 - intervene.evaluate_features(m, replay.features, new)["top1"]
        for name, m in (("plain", plain), ("calibrated", calibrated))
    }
    logits = FeatureHead(calibrated.model)(replay.features).detach()
    own = logits.gather(1, replay.targets[:, None]).squeeze(1)
    assert (logits[:, 9] < own).float().mean() >= 0.94  # the 5% quantile, interpolated
    assert takes["calibrated"] >= takes["plain"]


# ------------------------------------------------------------------------- bad input
def _bad_fix_cases(image_folders: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "unknown" / "Zebra").mkdir(parents=True)
    (tmp / "unknown" / "Zebra" / "z.png").write_bytes(
        (image_folders / "Bag").joinpath(next(iter(os.listdir(image_folders / "Bag")))).read_bytes()
    )
    (tmp / "empty" / "Bag").mkdir(parents=True)
    (tmp / "nothing").mkdir()
    return {
        "unknown class": (["--corrections", str(tmp / "unknown")], "unknown class 'Zebra'"),
        "empty class folder": (["--corrections", str(tmp / "empty")], "holds no images"),
        "empty new class": (["--add-class", f"Zebra={tmp / 'nothing'}"], "holds no images"),
        "existing class": (["--add-class", f"bag={image_folders / 'Bag'}"], "exists"),
        "no name": (["--add-class", str(image_folders / "Bag")], "expected NAME=DIR"),
        "nothing to do": ([], "nothing to do"),
    }


def test_fix_bad_input_is_one_line_exit_2_before_any_feature(
    capsys, monkeypatch, stripes_checkpoint, stripes_dir, image_folders, tmp_path
):
    def no_features(*args, **kwargs):
        raise AssertionError("the backbone ran before the input was checked")

    monkeypatch.setattr("nbdt.features.cache_features", no_features)
    for case, (argv, message) in _bad_fix_cases(image_folders, tmp_path / "in").items():
        out_file = tmp_path / "new.pt"
        code, out, err = cli(
            capsys, main, stripes_checkpoint, *argv, "-o", out_file, "--data-dir", stripes_dir
        )
        assert code == 2 and out == "", case
        assert message in one_error_line(err, "nbdt-fix"), case
        assert not out_file.exists(), case
