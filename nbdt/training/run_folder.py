"""A run's output folder: its files, written atomically by the main process, and the rules for
resuming or replacing a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nbdt._io import remove_stale_temporaries, write_text
from nbdt.checkpoint import read_checkpoint, save_checkpoint
from nbdt.hierarchy import Hierarchy
from nbdt.training.config import TrainConfig


class RunFolder:
    """A run's output folder: args.json, last.pt and best.pt, metrics.jsonl, hierarchy.json,
    the end-of-run outputs (:mod:`nbdt.training.outputs`), and the rules for resuming or
    replacing it.

    Only the main process (``main``) writes; every write is atomic. One run at a time: the
    main process holds ``.lock`` (an advisory ``flock``, which the system drops when the
    process ends, ``kill -9`` included) from :meth:`start` to :meth:`release`, which removes
    it. ``--overwrite`` moves the old run into ``.replaced/`` and deletes it only once the new
    run has written its first checkpoint; a run that ends before that gets the old files back.
    """

    FILES = (
        "last.pt", "best.pt", "metrics.jsonl", "args.json", "hierarchy.json", "hierarchy.html",
        "explanations.json", "explanations.html", "eval.json", "report.html",
        "node_examples.npz",
    )  # fmt: skip
    # Settings that do not change what a run computes: --resume may differ in these only.
    OPERATIONAL = frozenset(
        {
            "output", "data_dir", "download", "workers", "device", "compile", "resume",
            "overwrite", "quiet", "explain", "report", "examples",
        }
    )  # fmt: skip

    LOCK = ".lock"
    REPLACED = ".replaced"

    def __init__(self, path: str | os.PathLike[str], main: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.main = main
        self.saved_epoch = 0  # the epoch last.pt holds

    def resume_from(
        self, config: TrainConfig, device: torch.device
    ) -> tuple[dict[str, Any] | None, str]:
        """``last.pt``, checked to be a run of these settings, and a line saying what happens."""
        path = self.path / "last.pt"
        if not path.is_file():
            return None, f"no {path} yet: starting afresh"
        checkpoint = read_checkpoint(path, map_location=device)
        state = checkpoint.get("train")
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError(f"{path}: a model file without training state: cannot resume from it")
        before = state["config"]
        if config.epochs < before.get("epochs", 0):
            raise ValueError(
                f"--resume: --epochs {config.epochs} is fewer than the {before['epochs']} of"
                f" {path}'s run: --resume may raise --epochs, not lower it"
            )
        changed = [
            k
            for k, v in dataclasses.asdict(config).items()
            if k not in self.OPERATIONAL and k != "epochs" and before.get(k) != v
        ]
        if changed:
            key = changed[0]
            raise ValueError(
                f"--resume: {key} is {getattr(config, key)!r} here but {before.get(key)!r} in"
                f" {path}'s run: resume with the same settings, or use another --output"
            )
        return checkpoint, f"resuming {path} after epoch {int(state['epoch'])}"

    def start(self, config: TrainConfig, notes: dict[str, Any] | None = None) -> None:
        """Take the folder for this run (refused while another run holds it), set a replaced
        run's files aside (--overwrite), write args.json (the settings, and ``notes``: what
        the run guessed, e.g. class senses)."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._take()
        self._settle_replaced()  # a run killed before its first checkpoint: the old run back
        if config.overwrite or config.resume:
            remove_stale_temporaries(self.path)
        if config.overwrite:
            aside = self.path / self.REPLACED
            for path in self._run_files():
                target = aside / path.relative_to(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        write_json(self.path / "args.json", {**dataclasses.asdict(config), **(notes or {})})

    def release(self) -> None:
        """End the run's hold on the folder: a replaced run comes back unless this one wrote a
        checkpoint; the lock goes. Any ``RunFolder`` of the path may release it (the trainer
        does, whatever way the run ended); safe to call more than once and without a start."""
        lock = _HELD.pop(self.path, None)
        if lock is None:
            return
        self._settle_replaced()
        (self.path / self.LOCK).unlink(missing_ok=True)  # still locked: a waiter sees it go
        os.close(lock)  # closing the descriptor drops the flock

    def _take(self) -> None:
        """Hold the folder's lock, or raise naming the process that holds it."""
        if self.path in _HELD:  # this process holds it already (a run that never released)
            return
        path = self.path / self.LOCK
        while True:
            lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(lock, 32).decode(errors="replace").strip() or "another process"
                os.close(lock)
                raise ValueError(
                    f"--output {self.path}: another run (process {holder}) is writing this"
                    " folder: wait for it to end, or choose another --output"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(lock).st_ino:
                    break  # else its holder removed the file meanwhile: lock the new one
            os.close(lock)
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        _HELD[self.path] = lock

    def _run_files(self) -> list[Path]:
        """The files of a run in the folder (what --overwrite replaces)."""
        files = [self.path / name for name in self.FILES if (self.path / name).is_file()]
        return files + sorted(self.path.glob("images/test-*.png"))

    def _settle_replaced(self) -> None:
        """Drop the run set aside by --overwrite once the new run has a checkpoint; before
        that, put it back in place of whatever the new run wrote."""
        aside = self.path / self.REPLACED
        if not aside.is_dir():
            return
        if not (self.path / "last.pt").is_file():
            for path in self._run_files():
                path.unlink()
            for path in sorted(p for p in aside.rglob("*") if p.is_file()):
                target = self.path / path.relative_to(aside)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        shutil.rmtree(aside, ignore_errors=True)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Put every file back to the state of ``checkpoint`` (the last.pt resumed from): a
        ``kill -9`` may have stopped the run after last.pt and before best.pt, metrics.jsonl or
        hierarchy.json were written. Pages are written at the end of a run, from its state."""
        if not self.main:
            return
        state = checkpoint["train"]
        if (state.get("best") or {}).get("epoch") == state["epoch"]:
            self._save(checkpoint, "best.pt")  # last.pt is then the best checkpoint
        _write_lines(self.path / "metrics.jsonl", state["history"])
        Hierarchy.from_node_link(checkpoint["hierarchy"]).save(self.path / "hierarchy.json")

    def recorded_args(self) -> dict[str, Any] | None:
        """The settings args.json records (a run's), or None when the folder has none."""
        path = self.path / "args.json"
        if not path.is_file():
            return None
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(recorded, dict):
            raise ValueError(f"{path}: not a JSON object of settings")
        return recorded

    def history(self) -> list[dict[str, Any]] | None:
        """The rows of metrics.jsonl (one per epoch), or None when there are none."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not JSON lines ({e})") from None
        return [row for row in rows if isinstance(row, dict)] or None

    def publish_hierarchy(self, hierarchy: Hierarchy) -> None:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            hierarchy.save(self.path / "hierarchy.json")

    def save_epoch(
        self,
        checkpoint: dict[str, Any],
        history: Sequence[dict[str, Any]],
        best: bool,
        then: Callable[[], None] = lambda: None,
    ) -> None:
        """last.pt (and best.pt), metrics.jsonl, then ``then()`` (the epoch's report). A Ctrl-C
        meanwhile fires after all of it: the files are whole, ``saved_epoch`` says which epoch
        they hold."""
        if not self.main:
            return
        with _interrupts_deferred():
            self._save(checkpoint, "last.pt")
            self.saved_epoch = checkpoint["train"]["epoch"]
            self._settle_replaced()  # the new run has a checkpoint: the old one can go
            if best:
                self._save(checkpoint, "best.pt")
            _write_lines(self.path / "metrics.jsonl", history)
            then()

    def _save(self, checkpoint: dict[str, Any], name: str) -> None:
        save_checkpoint(checkpoint, self.path / name)  # a failure names the file (nbdt._io)

    def last_good(self) -> str:
        if not self.saved_epoch:
            return "no checkpoint was written"
        return f"{self.path / 'last.pt'} holds the last good epoch, {self.saved_epoch}"

    def after_error(self) -> str:
        """What the folder holds after a run stopped on an error, and how to go on."""
        if not self.saved_epoch:
            return (
                f"no checkpoint was written in {self.path}: run the same command again once fixed"
            )
        return (
            f"{self.path / 'last.pt'} holds epoch {self.saved_epoch}: continue with --resume"
            " once fixed"
        )


# The run folders this process holds, by path: the open lock file of each.
_HELD: dict[Path, int] = {}

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `kill` send


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, so the writes in flight finish; then
    raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in _STOP_SIGNALS
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


def _write_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
