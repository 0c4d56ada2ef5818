"""nbdt-train end to end on a tiny model and 28x28 data: metrics, checkpoints, resume, faults,
and torchrun on CPU."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbdt
from nbdt import data
from nbdt.cli.train import main as train_main
from nbdt.distributed import start_process
from nbdt.hierarchy import Hierarchy, Node
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training import loop as training_loop
from nbdt.training import run_folder
from nbdt.training.config import TrainConfig
from nbdt.training.loop import StepContext, eval_loader, train_loader, train_one_epoch, validate
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import Plan, make_plan
from nbdt.training.run_folder import RunFolder

BIN = Path(sys.executable).parent
ARCH = "test_efficientnet_gn"  # 0.1 M parameters, GroupNorm: no batch statistics
TIMING = ("train_images_per_s", "test_images_per_s")


def train_args(data_dir, output, *extra):
    """A 3-epoch run (1 warm-up, 2 tree-supervised) on the stripes data, 10 steps per epoch."""
    return [
        "--arch", ARCH, "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
        "--output", str(output), "--warmup-epochs", "1", "--epochs", "2", "--batch-size", "32",
        "--lr", "0.01", "--quiet", *extra,
    ]  # fmt: skip


def read_metrics(output):
    return [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def folder_bytes(folder):
    """Every file under ``folder`` with its content, to show that a refused run changed none."""
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(stripes_dir, tmp_path_factory):
    """One unstopped run, explaining two test images at the end; (output folder, stdout)."""
    output = tmp_path_factory.mktemp("runs") / "full"
    capture = subprocess.run(
        [BIN / "nbdt-train", *train_args(stripes_dir, output, "--explain", "2")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert capture.returncode == 0, capture.stderr
    return output, capture.stdout


@pytest.mark.slow
def test_run_writes_real_metrics_and_outputs(finished_run, stripes_dir):
    output, stdout = finished_run
    rows = read_metrics(output)
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "warmup"), (2, "tree"), (3, "tree")]
    for row in rows:
        assert row["train_images"] == 320 and row["test_images"] == 160
        assert all(0 <= row[k] <= 100 for k in ("top1", "nbdt_soft_top1", "nbdt_hard_top1"))
        assert row["train_images_per_s"] > 0 and row["test_loss"] > 0
    assert rows[-1]["top1"] > 40 and rows[-1]["nbdt_soft_top1"] > 40  # chance is 10%
    # The rate each epoch trained with, at its first step: cosine over 30 steps from 0.01.
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.0075, 0.0025])

    args = json.loads((output / "args.json").read_text())
    assert args["arch"] == ARCH and args["hierarchy"] == "induced" and args["lr"] == 0.01
    hierarchy = Hierarchy.load(output / "hierarchy.json")
    assert hierarchy.classes[0] == "T-shirt/top" and hierarchy.num_classes == 10
    assert (output / "hierarchy.html").read_text().lstrip().lower().startswith("<!doctype html")

    # last.pt is a model file: nbdt.load gives the same NBDT-soft accuracy on the test split.
    model = nbdt.load(output / "last.pt")
    assert model.hierarchy == hierarchy and model.data_config["input_size"] == (3, 28, 28)
    test = data.load_dataset("fashion-mnist", "test", stripes_dir)
    inputs = data.BatchTransform(model.data_config)(test.images)
    with torch.no_grad():
        correct = (model(inputs).argmax(1) == test.targets).float().mean().item()
    assert correct * 100 == pytest.approx(rows[-1]["nbdt_soft_top1"], abs=1e-3)
    best = torch.load(output / "best.pt", weights_only=True)
    assert best["train"]["best"]["nbdt_soft_top1"] == max(r["nbdt_soft_top1"] for r in rows)

    explained = json.loads((output / "explanations.json").read_text())
    assert len(explained) == 2 and Path(explained[0]["image"]).is_file()
    assert explained[0]["path"][-1]["child_label"] == explained[0]["label"]
    assert "network top-1" in stdout and "NBDT hard top-1" in stdout and str(output) in stdout
    assert not list(output.glob(".*tmp*"))


@pytest.mark.slow
def test_checkpoint_with_a_trained_head_skips_warmup_and_keeps_its_tree(
    finished_run, stripes_dir, tmp_path
):
    source = finished_run[0] / "last.pt"
    args = train_args(stripes_dir, tmp_path / "more", "--checkpoint", str(source))
    args[args.index("--epochs") + 1] = "1"
    args.remove("--arch")
    args.remove(ARCH)
    assert train_main(args) == 0
    rows = read_metrics(tmp_path / "more")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "tree")]
    saved = json.loads((tmp_path / "more" / "args.json").read_text())
    assert saved["hierarchy"] == "checkpoint" and saved["arch"] == ARCH
    assert nbdt.load(tmp_path / "more" / "last.pt").hierarchy == nbdt.load(source).hierarchy


def interrupt_evaluation(monkeypatch, epoch):
    """Raise KeyboardInterrupt (as Ctrl-C would) when the trainer starts evaluating ``epoch``."""
    original = training_loop.validate
    calls = []

    def validate(*args):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(training_loop, "validate", validate)


@pytest.mark.slow
def test_stopped_and_resumed_run_ends_like_the_unstopped_one(
    finished_run, stripes_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "stopped"
    interrupt_evaluation(monkeypatch, epoch=3)
    assert train_main(train_args(stripes_dir, output)) == 130
    assert "last.pt holds epoch 2; continue with --resume" in capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(output)] == [1, 2]
    monkeypatch.undo()

    assert train_main(train_args(stripes_dir, output, "--resume")) == 0
    assert "resuming" in capsys.readouterr().out
    expected = without_timing(read_metrics(finished_run[0]))
    assert without_timing(read_metrics(output)) == expected
    resumed, unstopped = nbdt.load(output / "last.pt"), nbdt.load(finished_run[0] / "last.pt")
    for key, value in unstopped.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_write_finishes_the_write(
    stripes_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "run"
    save = run_folder.save_checkpoint

    def interrupted_save(checkpoint, path):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the file is being written
        return save(checkpoint, path)

    monkeypatch.setattr(run_folder, "save_checkpoint", interrupted_save)
    args = train_args(stripes_dir, output)
    args[args.index("--epochs") + 1] = "0"
    assert train_main(args) == 130
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("epoch 1/1 warmup train loss")  # the epoch ended
    assert err == (
        f"nbdt-train: interrupted after epoch 1: {output / 'last.pt'} holds epoch 1;"
        " continue with --resume\n"
    )
    assert torch.load(output / "last.pt", weights_only=True)["train"]["epoch"] == 1
    assert (output / "best.pt").is_file() and [r["epoch"] for r in read_metrics(output)] == [1]
    assert not list(output.glob(".*tmp*"))


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_file(
    stripes_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "run"
    save = torch.save

    def disk_full_at_epoch_2(obj, path, *args, **kwargs):
        if obj["train"]["epoch"] == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_2)
    assert train_main(train_args(stripes_dir, output)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err
    assert torch.load(output / "last.pt", weights_only=True)["train"]["epoch"] == 1
    assert not list(output.glob(".*tmp*"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    stripes_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "run"
    original = Plan.criterion

    def criterion(plan, epoch, *args):
        loss = original(plan, epoch, *args)
        if epoch == 1:
            return lambda logits, target: loss(logits, target) * float("nan")
        return loss

    monkeypatch.setattr(Plan, "criterion", criterion)
    assert train_main(train_args(stripes_dir, output)) == 1
    err = capsys.readouterr().err
    assert "loss became nan in epoch 2" in err and "last good epoch, 1" in err
    assert torch.load(output / "last.pt", weights_only=True)["train"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(output)] == [1]


# ------------------------------------------------------------------------------ bad input
def other_classes_hierarchy(path):
    leaves = [Node(f"c{i}", f"class {i}") for i in range(10)]
    root = Node("root", "root", None, tuple(n.id for n in leaves))
    Hierarchy([root, *leaves], [n.id for n in leaves]).save(path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("arch", "unknown timm architecture 'no_such_net'"),
        ("data", "no Fashion-MNIST file"),
        ("hierarchy", "its leaves are not the 10 classes ['T-shirt/top'"),
        ("hierarchy-missing", "no such hierarchy file"),
        ("checkpoint", "not an nbdt model file"),
        ("resume-corrupt", "not an nbdt model file"),
        ("batch", "fewer than one batch"),
        ("hierarchy-checkpoint", "--hierarchy checkpoint needs --checkpoint"),
        ("weight-decay", "--weight-decay must be a finite number >= 0, got -0.1"),
        ("lr-inf", "--lr must be a finite number > 0, got inf"),
        ("tree-weight-nan", "--tree-weight must be a finite number >= 0, got nan"),
        ("run-exists", "out holds a run (last.pt): pass --resume to continue it, --overwrite"),
        ("resume-overwrite", "--overwrite replaces it: pass one of them"),
        ("empty-test", "empty: the test split holds no images"),
        ("holdout-unknown", "--holdout-classes: 'Zebra' not among the dataset's classes: T-shirt"),
        ("holdout-all", "--holdout-classes: fewer than two classes would stay"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, message, stripes_dir, tmp_path, capsys, write_idx):
    output = tmp_path / "out"
    args = train_args(stripes_dir, output)
    if case == "arch":
        args[args.index(ARCH)] = "no_such_net"
    elif case == "data":
        args[args.index(str(stripes_dir))] = str(tmp_path / "missing")
    elif case == "hierarchy":
        args += ["--hierarchy", str(other_classes_hierarchy(tmp_path / "h.json"))]
    elif case == "hierarchy-missing":
        args += ["--hierarchy", str(tmp_path / "nope.json")]
    elif case == "checkpoint":
        (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
        args += ["--checkpoint", str(tmp_path / "bad.pt")]
    elif case == "resume-corrupt":
        output.mkdir()
        (output / "last.pt").write_bytes(b"PK\x03\x04 truncated zip")
        args += ["--resume"]
    elif case == "hierarchy-checkpoint":
        args += ["--hierarchy", "checkpoint"]
    elif case == "batch":
        args[args.index("--batch-size") + 1] = "1000"
    elif case in ("weight-decay", "lr-inf", "tree-weight-nan"):
        option, value = {
            "weight-decay": ("--weight-decay", "-0.1"),
            "lr-inf": ("--lr", "inf"),
            "tree-weight-nan": ("--tree-weight", "nan"),
        }[case]
        args += [option, value]
    elif case == "run-exists":
        output.mkdir()
        (output / "last.pt").write_bytes(b"a run's checkpoint")
    elif case == "resume-overwrite":
        args += ["--resume", "--overwrite"]
    elif case == "holdout-unknown":
        args += ["--holdout-classes", "Ankle boot, Zebra"]
    elif case == "holdout-all":
        names = data.dataset_classes("fashion-mnist").names
        args += ["--holdout-classes", ",".join(names[1:])]
    elif case == "empty-test":
        empty = shutil.copytree(stripes_dir, tmp_path / "empty")
        write_idx(empty / "t10k-images-idx3-ubyte.gz", torch.zeros(0, 28, 28).numpy())
        write_idx(empty / "t10k-labels-idx1-ubyte.gz", torch.zeros(0).numpy())
        args[args.index(str(stripes_dir))] = str(empty)
    before = folder_bytes(output) if output.exists() else None
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbdt-train: error: ") and err.count("\n") == 1
    assert message in err
    # Refused before anything is written: no folder made, nothing in an existing one touched.
    assert (folder_bytes(output) if output.exists() else None) == before


@pytest.mark.slow
def test_resume_refuses_other_settings(finished_run, stripes_dir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    shutil.copy(finished_run[0] / "last.pt", output / "last.pt")
    assert train_main(train_args(stripes_dir, output, "--resume", "--lr", "0.02")) == 2
    assert "--resume: lr is 0.02 here but 0.01" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["last.pt"]  # no args.json of a refused run


@pytest.mark.slow
def test_a_run_folder_is_replaced_only_with_overwrite(finished_run, stripes_dir, tmp_path, capsys):
    output = shutil.copytree(finished_run[0], tmp_path / "run")
    before = folder_bytes(output)
    assert train_main(train_args(stripes_dir, output)) == 2
    assert capsys.readouterr().err == (
        f"nbdt-train: error: {output} holds a run (last.pt): pass --resume to continue it,"
        " --overwrite to replace it, or another --output\n"
    )
    assert folder_bytes(output) == before

    args = train_args(stripes_dir, output, "--overwrite")
    args[args.index("--epochs") + 1] = "0"
    assert train_main(args) == 0
    assert [r["epoch"] for r in read_metrics(output)] == [1]
    assert json.loads((output / "args.json").read_text())["epochs"] == 0
    assert torch.load(output / "best.pt", weights_only=True)["train"]["epoch"] == 1
    # The replaced run's explanations (this run explains none) went with it.
    assert not (output / "explanations.json").exists() and not list(output.glob("images/*"))
    assert (output / "hierarchy.html").is_file()


def test_cli_entry_point_exit_status(tmp_path):
    run = subprocess.run(
        [BIN / "nbdt-train", "--output", str(tmp_path), "--arch", "resnet18", "--data-dir",
         str(tmp_path / "nowhere")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "nowhere" in run.stderr


# ------------------------------------------------------------------ evaluation and held-out
@pytest.mark.slow
def test_the_run_ends_with_its_evaluation_report(finished_run):
    """eval.json measures the final model on the test split, as the last epoch's validation."""
    output, stdout = finished_run
    last = read_metrics(output)[-1]
    metrics = json.loads((output / "eval.json").read_text())
    assert metrics["images"] == last["test_images"] == 160 and metrics["unseen"] is None
    for variant, key in (("network", "top1"), ("nbdt_soft", "nbdt_soft_top1"),
                         ("nbdt_hard", "nbdt_hard_top1")):  # fmt: skip
        assert metrics["variants"][variant]["top1"] == pytest.approx(last[key], abs=1e-6)
    page = (output / "report.html").read_text()
    assert page.count("data:image/svg+xml") == 5  # four plots and the training curves
    assert "nbdt_hard  top-1" in stdout


@pytest.mark.slow
def test_held_out_class_is_left_out_of_training_and_routed_by_nbdt_eval(
    stripes_dir, tmp_path, capsys
):
    from nbdt.cli.evaluate import main as eval_main

    output = tmp_path / "held"
    args = train_args(stripes_dir, output, "--holdout-classes", "Ankle boot", "--no-report")
    assert train_main(args) == 0
    assert json.loads((output / "args.json").read_text())["holdout_classes"] == ["Ankle boot"]
    rows = read_metrics(output)
    assert rows[0]["train_images"] == 288 and rows[0]["test_images"] == 144  # 9 of 10 classes
    model = nbdt.load(output / "last.pt")
    assert "Ankle boot" not in model.hierarchy.classes and model.hierarchy.num_classes == 9
    assert not (output / "eval.json").exists()  # --no-report

    out = tmp_path / "eval"
    args = [str(output / "last.pt"), "--dataset", "fashion-mnist", "--data-dir", str(stripes_dir)]
    assert eval_main([*args, "--out", str(out), "--no-report"]) == 0
    assert "Ankle boot -> " in capsys.readouterr().out
    metrics = json.loads((out / "eval.json").read_text())
    assert not (out / "report.html").exists()
    assert metrics["images"] == 144 and metrics["unseen"]["overall"]["images"] == 16
    (unseen,) = metrics["unseen"]["classes"]
    assert unseen["name"] == "Ankle boot" and unseen["images"] == 16
    assert set(unseen) == {"name", "wnid", "images", "target", "nbdt", "network", "levels"}
    assert unseen["target"]["relatives"] == ["Sandal", "Sneaker"]
    assert 0 <= unseen["nbdt"] <= 100 and 0 <= unseen["network"] <= 100
    root = unseen["levels"][0]  # every image passes the root
    assert [(e["id"], e["share"]) for e in root] == [(model.hierarchy.root.id, 100.0)]
    for level in unseen["levels"][1:]:
        assert sum(e["share"] for e in level) <= 100.0 + 1e-9


# ---------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_at_the_same_global_batch(stripes_dir, tmp_path):
    """gloo DDP on CPU: each process takes half of every global batch of 32; without batch
    statistics (GroupNorm) and augmentation the runs compute the same updates."""
    extra = ("--no-augment", "--workers", "0")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [BIN / "nbdt-train", *train_args(stripes_dir, tmp_path / "one", *extra)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", BIN / "nbdt-train",
         *train_args(stripes_dir, tmp_path / "two", *extra)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("done:") == 1  # rank 0 alone reports and writes
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert b["test_images"] == 160 and b["train_images"] == 320
        for key in ("train_loss", "test_loss", "test_ce"):
            assert b[key] == pytest.approx(a[key], rel=2e-3), key
        for key in ("train_top1", "top1", "nbdt_soft_top1", "nbdt_hard_top1"):
            assert abs(b[key] - a[key]) <= 1.0, key  # at most one or two images either way
    shutil.rmtree(tmp_path / "two")


# ------------------------------------------------------------------------- the parts alone
@pytest.mark.slow
def test_the_parts_serve_a_head_only_refit(stripes_dir, tmp_path):
    """Another command from the trainer's pieces: the plan's network and data, one epoch that
    trains the head alone, the evaluation pass, and a run folder with its output stages."""
    config = TrainConfig(
        output=str(tmp_path / "refit"), arch=ARCH, data_dir=str(stripes_dir), batch_size=32,
        warmup_epochs=0, epochs=1, lr=0.05, quiet=True, hierarchy="random",
    )  # fmt: skip
    config.validate()
    process = start_process("cpu")
    plan = make_plan(config, process.device)
    model, model_kwargs = plan.network()
    head = model.pretrained_cfg["classifier"]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(head + "."))
    data_config = plan.data_config(model, model_kwargs)
    transform = data.BatchTransform(data_config)
    context = StepContext(process)
    loader, _ = train_loader(plan.train_set, plan.config, process)
    optimizer = torch.optim.SGD(model.get_classifier().parameters(), lr=plan.config.lr)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    hierarchy = plan.fixed_hierarchy()
    criterion = plan.criterion(0, hierarchy, process.device)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    stats = train_one_epoch(model, loader, criterion, optimizer, scheduler, transform, context)
    assert stats["train_images"] == 320 and stats["train_loss"] > 0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}

    nbdt_model = NBDT(
        model, hierarchy, arch=ARCH, model_kwargs=model_kwargs, data_config=data_config
    )
    test = eval_loader(plan.test_set, plan.config, process)
    metrics = validate(model, test, criterion, nbdt_model.rules, transform, context)
    assert metrics["test_images"] == 160
    with torch.no_grad():
        images, targets = next(iter(torch.utils.data.DataLoader(plan.test_set, batch_size=160)))
        soft = (nbdt_model(transform(images)).argmax(1) == targets).float().mean().item()
    assert metrics["nbdt_soft_top1"] == pytest.approx(100 * soft)

    folder = RunFolder(plan.config.output)
    folder.start(plan.config)
    folder.publish_hierarchy(hierarchy)
    folder.save_epoch(nbdt_model.checkpoint(train={"epoch": 1}), [metrics], best=True)
    result = RunResult(
        nbdt_model, plan.config, plan.classes, plan.test_set, transform, Progress(False, True)
    )
    write_outputs(folder, result)
    folder.release()  # what train() does however the run ends: the lock goes
    names = {p.name for p in folder.path.iterdir()}
    assert names == {"args.json", "hierarchy.json", "hierarchy.html", "last.pt", "best.pt",
                     "metrics.jsonl", "eval.json", "report.html"}  # fmt: skip
    assert nbdt.load(folder.path / "last.pt").hierarchy == hierarchy


def test_train_one_epoch_hands_the_criterion_the_teachers_logits_on_the_same_inputs():
    """Distillation: ``criterion(logits, targets, teacher(inputs))`` for each batch, no gradient
    into the teacher."""
    torch.manual_seed(0)
    features = torch.randn(12, 5)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, torch.arange(12) % 3), batch_size=4
    )
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    seen = []

    def criterion(logits, targets, teacher_logits):
        seen.append(teacher_logits)
        return F.mse_loss(logits, teacher_logits)

    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    context = StepContext(start_process("cpu"))
    stats = train_one_epoch(
        student, loader, criterion, optimizer, scheduler, lambda x, g: x, context, teacher=teacher
    )
    assert stats["train_images"] == 12
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(seen), teacher(features))
    assert all(not t.requires_grad for t in seen) and teacher.weight.grad is None
