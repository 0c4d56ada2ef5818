"""The guards every command shares (issue 18): an output never replaces an input, one run
folder is written by one run at a time, ``--overwrite`` keeps the old run until the new one has
a checkpoint, and killed writes leave no temporary file for good."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbdt.cli import compress, examples, explain, export, fix, hierarchy


def _inputs(tmp_path: Path) -> dict[str, Path]:
    """Files the commands read; the guard runs before any is parsed, so bytes suffice."""
    files = {
        "CK": tmp_path / "ck.pt",
        "npz": tmp_path / "ex.npz",
        "onnx": tmp_path / "m.onnx",
        "img": tmp_path / "img.png",
        "tree": tmp_path / "tree.json",
        "edits": tmp_path / "edits.txt",
        "wnids": tmp_path / "wn.tsv",
        "pruned": tmp_path / "D" / "pruned.pt",
        "image": tmp_path / "corr" / "Coat" / "c0.png",
    }
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"the {name} input\n".encode())
    return files


CASES = {
    "examples -o CK": (examples, ["{CK}", "-o", "{CK}"], "CK"),
    "fix -o CK": (fix, ["{CK}", "--corrections", "{corr}", "-o", "{CK}"], "CK"),
    "fix -o an image read": (fix, ["{CK}", "--corrections", "{corr}", "-o", "{image}"], "image"),
    "export -o CK": (export, ["{CK}", "-o", "{CK}"], "CK"),
    "explain --html examples": (
        explain,
        ["--checkpoint", "{CK}", "--examples", "{npz}", "--html", "{npz}", "{img}"],
        "npz",
    ),
    "explain --html onnx": (explain, ["--onnx", "{onnx}", "--html", "{onnx}", "{img}"], "onnx"),
    "hierarchy edit -o edits": (
        hierarchy,
        ["edit", "{tree}", "{edits}", "-o", "{edits}"],
        "edits",
    ),
    "hierarchy wordnet --out wnids": (
        hierarchy,
        ["wordnet", "--dataset", "fashion-mnist", "--wnids", "{wnids}", "--out", "{wnids}"],
        "wnids",
    ),
    "compress -o the input's folder": (
        compress,
        ["{pruned}", "-o", "{D}", "--prune", "0.5"],
        "pruned",
    ),
    "hard link": (examples, ["{CK}", "-o", "{link}"], "CK"),
}


@pytest.mark.parametrize("case", CASES)
def test_no_output_replaces_an_input(case, tmp_path, capsys):
    files = _inputs(tmp_path)
    os.link(files["CK"], tmp_path / "link.pt")
    names = {**{k: str(v) for k, v in files.items()}, "corr": str(tmp_path / "corr")}
    names |= {"D": str(tmp_path / "D"), "link": str(tmp_path / "link.pt")}
    module, argv, guarded = CASES[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = module.main([a.format(**names) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "input" in err[0] and str(files[guarded]) in err[0], err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_two_outputs_may_not_name_one_file(tmp_path, capsys):
    tree = tmp_path / "t.json"
    argv = ["random", "--dataset", "fashion-mnist", "-o", str(tree), "--html", str(tree)]
    assert hierarchy.main(argv) == 2
    assert "also given to --output" in capsys.readouterr().err
    assert not tree.exists()


# ------------------------------------------------------------------------- the run folder
HOLD = """
import sys, time
from nbdt.training.config import TrainConfig
from nbdt.training.run_folder import RunFolder
RunFolder(sys.argv[1]).start(TrainConfig(output=sys.argv[1], overwrite=sys.argv[2] == "1"))
print("held", flush=True)
time.sleep(600)
"""


def _hold(folder: Path, overwrite: bool = False):
    """A process that starts a run in ``folder`` and then hangs, as a training run would."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "1" if overwrite else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _old_run(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    files = {"best.pt": b"old best", "last.pt": b"old last", "args.json": b"{}\n"}
    files |= {"metrics.jsonl": b'{"epoch": 1}\n', "images/test-0.png": b"old png"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def test_one_run_folder_is_written_by_one_run_at_a_time(tmp_path):
    from nbdt.training.config import TrainConfig
    from nbdt.training.run_folder import RunFolder

    run = tmp_path / "run"
    holder = _hold(run)
    try:
        with pytest.raises(ValueError, match=f"process {holder.pid}.*another --output"):
            RunFolder(run).start(TrainConfig(output=str(run), overwrite=True))
    finally:
        holder.kill()  # kill -9: the lock of a dead process is no lock
        holder.wait()
    folder = RunFolder(run)
    folder.start(TrainConfig(output=str(run), overwrite=True))
    folder.release()
    folder.release()  # twice is fine


def test_two_train_commands_into_one_folder_the_second_is_refused(tmp_path, stripes_dir, capsys):
    from nbdt.cli.train import main as train_main

    run = tmp_path / "run"
    holder = _hold(run)
    try:
        argv = ["--arch", "test_efficientnet_gn", "--data-dir", str(stripes_dir), "--quiet"]
        argv += ["--subset", "64", "--batch-size", "32", "--epochs", "1", "--overwrite"]
        code = train_main([*argv, "-o", str(run)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another run" in err[0], err
    assert not (run / "last.pt").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path):
    from nbdt.training.config import TrainConfig
    from nbdt.training.run_folder import RunFolder

    run = tmp_path / "run"
    old = _old_run(run)
    config = TrainConfig(output=str(run), overwrite=True)
    folder = RunFolder(run)
    folder.start(config)  # the old run is set aside, the new one fails before a checkpoint
    assert not (run / "best.pt").exists()
    folder.release()
    assert {n: (run / n).read_bytes() for n in old} == old
    assert not (run / ".replaced").exists()

    holder = _hold(run, overwrite=True)  # killed (-9) before its first checkpoint
    holder.kill()
    holder.wait()
    folder = RunFolder(run)
    folder.start(TrainConfig(output=str(run)))  # the next start puts the old run back
    folder.release()
    del old["args.json"]  # (which that start writes anew)
    assert {n: (run / n).read_bytes() for n in old} == old

    folder = RunFolder(run)
    folder.start(config)
    (run / "last.pt").write_bytes(b"new last")  # the new run's first checkpoint
    folder.release()
    assert (run / "last.pt").read_bytes() == b"new last"
    assert not (run / "best.pt").exists() and not (run / ".replaced").exists()


# ------------------------------------------------------------------- killed writes
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_write_clears_what_killed_writes_of_the_same_file_left(tmp_path):
    """``kill -9`` during nbdt-fix (``.k.pt.<pid>.<hex>.tmp``) or nbdt-compress leaves a
    temporary file; the next write of that file (every writer goes through atomic_path)
    removes it. A live process's temporary and other files' stay."""
    from nbdt._io import write_text

    dead = tmp_path / f".k.pt.{_dead_pid()}.0123abcd.tmp"
    live = tmp_path / f".k.pt.{os.getppid()}.0123abcd.tmp"
    other = tmp_path / f".kk.pt.{_dead_pid()}.0123abcd.tmp"
    for path in (dead, live, other):
        path.write_bytes(b"x" * 1000)
    write_text(tmp_path / "k.pt", "new")
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "k.pt").read_text() == "new"


# --------------------------------------------------- outputs checked before any work
@pytest.fixture(scope="module")
def fm_model(tmp_path_factory, stripes_dir) -> Path:
    """An untrained tiny timm model over Fashion-MNIST's classes, saved as a model file."""
    import timm
    import torch

    from nbdt.data import load_dataset
    from nbdt.hierarchy import Hierarchy
    from nbdt.model import NBDT

    classes = load_dataset("fashion-mnist", "test", stripes_dir).classes
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet_gn", num_classes=10)
    config = {"input_size": (3, 28, 28), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    folder = tmp_path_factory.mktemp("fm")
    return NBDT(net, Hierarchy.random(classes, seed=0), data_config=config).save(folder / "m.pt")


def _no_evaluation(*args, **kwargs):
    raise AssertionError("the evaluation ran before the output was checked")


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    from nbdt.cli import evaluate

    monkeypatch.setattr("nbdt.evaluation.evaluate.evaluate", _no_evaluation)
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"never read")
    taken = tmp_path / "eval"
    taken.write_text("a file where the folder should go")
    assert evaluate.main([str(checkpoint), "-o", str(taken)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err  # not "[Errno 17]"
    assert evaluate.main([str(checkpoint), "-o", str(taken / "sub")]) == 2
    assert f"{taken} is a file, not a folder" in capsys.readouterr().err
    assert examples.main([str(checkpoint), "-o", str(tmp_path / "no" / "x.npz")]) == 2
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "no").exists()

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr("nbdt._io.os.statvfs", lambda path: ReadOnly)
    assert evaluate.main([str(checkpoint), "-o", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-only file system: choose a writable location" in err[0]


def test_a_failed_first_write_leaves_no_empty_folder(
    fm_model, stripes_dir, tmp_path, capsys, monkeypatch
):
    import errno

    from nbdt.cli import evaluate

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nbdt.evaluation.evaluate.write_eval_json", full)
    out = tmp_path / "a" / "eval"
    argv = [str(fm_model), "--data-dir", str(stripes_dir), "--subset", "8", "--no-report"]
    assert evaluate.main([*argv, "--dataset", "fashion-mnist", "-o", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_duplicate_folder_classes_are_refused_before_the_run_folder_is_made(tmp_path, capsys):
    from PIL import Image

    from nbdt.cli.train import main as train_main

    for split in ("train", "val"):
        for name in ("Coat", "coat", "Bag"):  # Coat and coat: one WordNet id
            (tmp_path / "d" / split / name).mkdir(parents=True)
            Image.new("RGB", (28, 28)).save(tmp_path / "d" / split / name / "a.png")
    argv = ["--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--arch"]
    code = train_main([*argv, "test_efficientnet_gn", "-o", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "listed twice" in err[-1], err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- messages
def test_error_messages_cannot_drive_the_terminal(capsys):
    """Class and file names reach error messages from files anyone writes: every command's
    error line shows ESC and bidi controls as escapes."""
    import argparse

    from nbdt.cli._common import run

    def fails(args):
        raise ValueError("classes: \x1b[2Jred, \u202egreen\x07 unknown")

    assert run("nbdt-x", fails, argparse.ArgumentParser(), []) == 2
    err = capsys.readouterr().err
    assert err == "nbdt-x: error: classes: \\x1b[2Jred, \\u202egreen\\x07 unknown\n"


def test_pickled_code_is_named_whatever_torch_calls_it(tmp_path):
    import torch

    from nbdt.checkpoint import read_checkpoint

    class Code:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Code()}, path)
    with pytest.raises(ValueError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    assert "would run pickled Python code (posix.system)" in message
    assert "weights_only" not in message


def test_a_full_disk_says_so_not_torchs_enforce_fail(tmp_path, monkeypatch):
    import torch

    from nbdt.checkpoint import save_checkpoint

    def torch_writer_on_a_full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    class Full:
        f_bavail, f_frsize, f_flag = 0, 4096, 0

    monkeypatch.setattr(torch, "save", torch_writer_on_a_full_disk)
    monkeypatch.setattr("nbdt._io.os.statvfs", lambda path: Full)
    with pytest.raises(OSError) as failed:
        save_checkpoint({"x": 1}, tmp_path / "k.pt")
    assert str(failed.value) == (
        f"{tmp_path / 'k.pt'}: not written (No space left on device); free some space and run again"
    )
    assert "enforce" not in str(failed.value) and not list(tmp_path.iterdir())
