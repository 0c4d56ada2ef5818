"""The trainer's faults: crashes at any moment, full disks, bad folders, signals, --epochs grown."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbdt._io import atomic_path, write_text
from nbdt.cli.train import main as train_main
from nbdt.training import loop as training_loop
from nbdt.training.config import TrainConfig
from nbdt.training.run_folder import RunFolder

ARCH = "test_efficientnet_gn"


def train_args(data_dir, output, *extra, warmup=1, epochs=2):
    return [
        "--arch", ARCH, "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
        "--output", str(output), "--warmup-epochs", str(warmup), "--epochs", str(epochs),
        "--batch-size", "32", "--lr", "0.01", "--quiet",
    ] + list(extra)  # fmt: skip


def metrics_epochs(output):
    lines = (Path(output) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def saved_epoch(path):
    return torch.load(path, weights_only=True)["train"]["epoch"]


KILLER = """
import os, sys
from nbdt.training import run_folder
from nbdt.cli.train import main as train_main
save = run_folder.save_checkpoint
name, epoch = sys.argv[1], int(sys.argv[2])
def killed(checkpoint, path):
    if path.name == name and checkpoint["train"]["epoch"] == epoch:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.0123abcd.tmp")
        tmp.write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), 9)
    return save(checkpoint, path)
run_folder.save_checkpoint = killed
train_main(sys.argv[3:])
"""


def killed_run(name, epoch, args):
    """nbdt-train killed with SIGKILL while it writes ``name`` of ``epoch``."""
    result = subprocess.run(
        [sys.executable, "-c", KILLER, name, str(epoch), *args], capture_output=True, text=True
    )
    assert result.returncode == -9, result.stderr


# ------------------------------------------------------------------ 3: kill -9, then resume
@pytest.mark.slow
def test_kill_9_while_best_pt_is_written_then_resume_restores_every_file(
    stripes_dir, tmp_path, capsys
):
    output = tmp_path / "run"
    killed_run("best.pt", 3, train_args(stripes_dir, output))
    best = torch.load(output / "last.pt", weights_only=True)["train"]
    assert best["epoch"] == 3 and metrics_epochs(output) == [1, 2]  # the crash's state
    assert list(output.glob(".best.pt.*.tmp"))
    assert train_main(train_args(stripes_dir, output, "--resume")) == 0
    out = capsys.readouterr().out
    best_epoch = best["best"]["epoch"]
    assert f"at epoch {best_epoch} (best.pt)" in out
    assert saved_epoch(output / "best.pt") == best_epoch
    assert metrics_epochs(output) == [1, 2, 3]
    assert not list(output.glob(".*.tmp"))
    assert (output / "hierarchy.html").is_file()


@pytest.mark.slow
def test_kill_9_while_last_pt_is_written_resumes_from_the_epoch_before(
    stripes_dir, tmp_path, capsys
):
    output = tmp_path / "run"
    killed_run("last.pt", 2, train_args(stripes_dir, output))
    assert saved_epoch(output / "last.pt") == 1 and list(output.glob(".last.pt.*.tmp"))
    assert train_main(train_args(stripes_dir, output, "--resume")) == 0
    assert "resuming" in capsys.readouterr().out
    assert metrics_epochs(output) == [1, 2, 3] and saved_epoch(output / "last.pt") == 3
    assert not list(output.glob(".*.tmp"))


def test_overwrite_removes_stale_temporary_files(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    stale = folder.path / ".last.pt.4242.deadbeef.tmp"
    stale.write_bytes(b"x" * 100)
    (folder.path / "last.pt").write_bytes(b"old")
    keep = folder.path / "notes.tmp"
    keep.write_text("the user's")
    folder.start(TrainConfig(output=str(folder.path), overwrite=True))
    assert not stale.exists() and not (folder.path / "last.pt").exists() and keep.exists()


# ------------------------------------------------------------------ 4: a tree from a random head
def test_an_induced_tree_from_an_untrained_head_is_refused(stripes_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert train_main(train_args(stripes_dir, output, warmup=0)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "randomly initialised head" in err and "--warmup-epochs" in err
    assert not output.exists()


# ------------------------------------------------------------------ 7: torch's writer fails
@pytest.mark.slow
def test_torchs_runtime_error_on_a_full_disk_is_one_line(
    stripes_dir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "run"
    save = torch.save

    def full_disk_at_epoch_2(obj, path, *args, **kwargs):
        if obj["train"]["epoch"] == 2:
            Path(path).write_bytes(b"half")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . basic_ios::clear: iostream error"
            )
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_epoch_2)
    assert train_main(train_args(stripes_dir, output)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(output / "last.pt") in err and "iostream" in err
    assert "--resume" in err and ".tmp" not in err
    assert saved_epoch(output / "last.pt") == 1 and not list(output.glob(".*.tmp"))


# ------------------------------------------------------------------ 9: the user's path, no errno
def test_an_output_that_is_a_file_is_named_without_errno(stripes_dir, tmp_path, capsys):
    output = tmp_path / "taken"
    output.write_text("mine")
    assert train_main(train_args(stripes_dir, output)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and "Errno" not in err
    assert output.read_text() == "mine"


@pytest.mark.parametrize("errno, hint", [(28, "free some space"), (30, "writable")])
def test_a_failed_write_names_the_users_path_and_what_to_do(tmp_path, errno, hint):
    target = tmp_path / "page.html"
    with pytest.raises(OSError) as error:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno, os.strerror(errno), str(tmp))
    message = str(error.value)
    assert message.startswith(f"{target}: not written") and hint in message
    assert ".tmp" not in message and "Errno" not in message
    assert not list(tmp_path.iterdir())


def test_writing_into_proc_names_the_file_not_a_temporary_one():
    with pytest.raises(OSError) as error:
        write_text("/proc/nbdt-page.html", "x")
    assert str(error.value).startswith("/proc/nbdt-page.html: not written")
    assert ".tmp" not in str(error.value)


# ------------------------------------------------------------------ 15: before anything is written
def image_folder(root, classes, corrupt=None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(40):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / classes[0] / "7.png").write_bytes(b"\x89PNG broken")
    return root


def test_a_one_class_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    data = image_folder(tmp_path / "data", ["cat"])
    output = tmp_path / "run"
    args = ["--arch", ARCH, "--dataset", "folder", "--data-dir", str(data), "--output",
            str(output), "--image-size", "16", "--batch-size", "8", "--quiet"]  # fmt: skip
    assert train_main(args) == 2
    assert "one class" in capsys.readouterr().err and not output.exists()


@pytest.mark.slow
def test_a_corrupt_image_mid_epoch_says_what_the_folder_holds(tmp_path, capsys):
    data = image_folder(tmp_path / "data", ["cat", "dog"], corrupt=True)
    output = tmp_path / "run"
    args = ["--arch", ARCH, "--dataset", "folder", "--data-dir", str(data), "--output",
            str(output), "--image-size", "16", "--batch-size", "8", "--quiet", "--workers", "0",
            "--warmup-epochs", "1", "--epochs", "1"]  # fmt: skip
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "7.png" in err
    assert "no checkpoint was written" in err and "run the same command again" in err


# ------------------------------------------------------------------ smaller: --epochs, SIGTERM
@pytest.mark.slow
def test_resume_may_extend_the_epochs(stripes_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert train_main(train_args(stripes_dir, output, epochs=1)) == 0
    assert train_main(train_args(stripes_dir, output, "--resume", epochs=2)) == 0
    assert metrics_epochs(output) == [1, 2, 3]
    assert json.loads((output / "args.json").read_text())["epochs"] == 2
    assert train_main(train_args(stripes_dir, output, "--resume", epochs=1)) == 2
    assert "--epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(stripes_dir, tmp_path, monkeypatch, capsys):
    output = tmp_path / "run"
    original, calls = training_loop.validate, []

    def validate(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(training_loop, "validate", validate)
    assert train_main(train_args(stripes_dir, output)) == 130
    err = capsys.readouterr().err
    assert "holds epoch" in err and "continue with --resume" in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
