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
