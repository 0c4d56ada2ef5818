"""The recipe behind ``nbdt-train``: a timm backbone, its hierarchy, tree supervision.

A run warms the head up with plain cross-entropy while it is not trained for the dataset's
classes, builds the hierarchy (induced from that head, WordNet, random or a file), then fine-tunes
with the soft or hard tree-supervision loss, and after every epoch measures network, NBDT-soft and
NBDT-hard top-1. It runs on CUDA (bf16 autocast), MPS or CPU, and under ``torchrun`` with
DistributedDataParallel; checkpoints are written atomically and a resumed run ends as an
unstopped one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nbdt import data as datasets
from nbdt._messages import for_terminal, one_line
from nbdt.distributed import Process, amp_dtype, start_process
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT
from nbdt.training.config import TrainConfig, make_optimizer
from nbdt.training.loop import (
    LossDiverged,
    StepContext,
    eval_loader,
    seed_epoch,
    train_loader,
    train_one_epoch,
    validate,
)
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import Plan, make_plan
from nbdt.training.progress import Progress
from nbdt.training.run_folder import RunFolder


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which epoch ``last.pt`` holds."""


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the recipe and return the summary (also printed, with the output files).

    Raises ``ValueError`` / ``FileNotFoundError`` for bad input, :class:`LossDiverged` when the
    loss stops being finite and :class:`Interrupted` on Ctrl-C.
    """
    config.validate()
    runtime = start_process(config.device)
    try:
        with _sigterm_as_ctrl_c():
            plan = make_plan(config, runtime.device)
            if config.head_only:
                from nbdt.training.head_only import fit_head

                summary = fit_head(plan, runtime)
            else:
                summary = _Fit(plan, runtime).run()
        if runtime.distributed:
            dist.barrier()  # rank 0 still writes pages and explanations: leave the group together
        return summary
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- the run
class _Fit:
    """The recipe of ``nbdt-train`` over the pieces above: the plan's network and data,
    warm-up then tree-supervised epochs, a checkpoint per epoch, the output stages at the end."""

    def __init__(self, plan: Plan, runtime: Process):
        plan.check_tree_source()
        self.plan, self.runtime = plan, runtime
        self.config = config = plan.config
        self.folder = RunFolder(config.output, runtime.main)
        device = runtime.device

        torch.manual_seed(config.seed)
        self.model, self.model_kwargs = plan.network()
        self.data_config = plan.data_config(self.model, self.model_kwargs)
        self.train_transform = datasets.BatchTransform(self.data_config, augment=config.augment)
        self.eval_transform = datasets.BatchTransform(self.data_config)
        self.hierarchy = plan.fixed_hierarchy()
        self.context = StepContext(
            runtime,
            amp_dtype(device) if config.amp else None,
            Progress(runtime.main, config.quiet),
        )
        self.model.to(device, memory_format=self.context.memory_format)
        self.train_transform.to(device)
        self.eval_transform.to(device)

        self.train_loader, self.sampler = train_loader(plan.train_set, config, runtime)
        self.test_loader = eval_loader(plan.test_set, config, runtime)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=plan.total_epochs * len(self.train_loader)
        )
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.resumed: dict[str, Any] | None = None
        self.resume_note = self._resume() if config.resume else None

        self.train_model = self.model
        if runtime.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    def _resume(self) -> str:
        """Restore the run in ``last.pt`` of the output folder, if there is one; say what."""
        checkpoint, note = self.folder.resume_from(self.config, self.runtime.device)
        if checkpoint is None:
            return note
        state = checkpoint["train"]
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.context.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"{self.folder.path / 'last.pt'}: cannot restore the run ({one_line(e)})"
            ) from None
        # --epochs may have grown: the schedule runs to the new end
        self.scheduler.T_max = self.plan.total_epochs * len(self.train_loader)
        self.resumed = checkpoint
        self.start_epoch = self.folder.saved_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state["best"]
        if self.hierarchy is None and self.start_epoch >= self.plan.warmup_epochs:
            self.hierarchy = Hierarchy.from_node_link(checkpoint["hierarchy"])
        return note

    def run(self) -> dict[str, Any]:
        """Write the run's files (only now: every setting has been checked) and train."""
        progress = self.context.progress
        guesses = self.plan.class_guesses
        self.folder.start(self.config, {"class_guesses": guesses} if guesses else None)
        for guess in guesses:
            progress.line(f"class name guessed: {for_terminal(guess)}; override with --wnids")
        if self.resumed is not None:
            self.folder.restore(self.resumed)
            self.resumed = None
        if self.resume_note:
            progress.line(self.resume_note)
        if self.hierarchy is not None:
            self.folder.publish_hierarchy(self.hierarchy)
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.plan.total_epochs):
                self._epoch(epoch)
        except KeyboardInterrupt:
            done = self.folder.saved_epoch
            when = f"after epoch {done}" if done == epoch + 1 else f"during epoch {epoch + 1}"
            where = (
                f"{self.folder.path / 'last.pt'} holds epoch {done}"
                if done
                else ("no epoch finished")
            )
            raise Interrupted(f"{when}: {where}; continue with --resume") from None
        except (ValueError, OSError) as e:  # a bad image found mid-epoch, a full disk
            kind = OSError if isinstance(e, OSError) else ValueError
            raise kind(f"{one_line(e)}; {self.folder.after_error()}") from None
        summary = self._summary()
        result = RunResult(
            self._nbdt(self.hierarchy),
            self.config,
            self.plan.classes,
            self.plan.test_set,
            self.eval_transform,
            progress,
            self.plan.eval_set,
            self.plan.train_set,
        )
        write_outputs(self.folder, result)
        progress.summary(summary)
        return summary

    def _epoch(self, epoch: int) -> None:
        plan, config = self.plan, self.config
        tree_phase = epoch >= plan.warmup_epochs
        if tree_phase and self.hierarchy is None:  # no warm-up epoch ran before this one here
            self.hierarchy = plan.induce(self.model)
            self.folder.publish_hierarchy(self.hierarchy)
        criterion = plan.criterion(epoch, self.hierarchy, self.runtime.device)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step
        self.sampler.set_epoch(epoch)
        generator = seed_epoch(config.seed, epoch, self.runtime.rank, self.runtime.device)
        try:
            train_stats = train_one_epoch(
                self.train_model, self.train_loader, criterion, self.optimizer, self.scheduler,
                self.train_transform, self.context, generator=generator,
                description=f"epoch {epoch + 1}/{plan.total_epochs}",
            )  # fmt: skip
        except LossDiverged as e:
            stopped = f"{e}: stopped; {self.folder.last_good()}; try a lower --lr"
            raise LossDiverged(stopped) from None
        hierarchy = self.hierarchy
        if not tree_phase and config.hierarchy == "induced":
            # Evaluate the warm-up with the tree of the head as it is now; the last one stays.
            hierarchy = plan.induce(self.model)
            self.folder.publish_hierarchy(hierarchy)
            if epoch + 1 == plan.warmup_epochs:
                self.hierarchy = hierarchy
        nbdt = self._nbdt(hierarchy)
        test_stats = validate(
            self.model, self.test_loader, criterion, nbdt.rules, self.eval_transform, self.context
        )
        phase = "tree" if tree_phase else "warmup"
        metrics = {"epoch": epoch + 1, "phase": phase, "lr": lr, **train_stats, **test_stats}
        self.history.append(metrics)
        improved = self.best is None or metrics["nbdt_soft_top1"] > self.best["nbdt_soft_top1"]
        if improved:
            self.best = {"epoch": epoch + 1, "nbdt_soft_top1": metrics["nbdt_soft_top1"]}
        if self.runtime.main:
            checkpoint = nbdt.checkpoint(train=self._train_state(epoch + 1))
            report = functools.partial(self.context.progress.epoch, metrics, plan.total_epochs)
            self.folder.save_epoch(checkpoint, self.history, improved, then=report)

    def _nbdt(self, hierarchy: Hierarchy) -> NBDT:
        return NBDT(
            self.model,
            hierarchy,
            node_score=self.config.node_score,
            arch=self.config.arch,
            model_kwargs=self.model_kwargs,
            data_config=self.data_config,
        ).to(self.runtime.device)

    def _train_state(self, epoch: int) -> dict[str, Any]:
        """What --resume needs besides the model: random state is derived from (seed, epoch,
        rank) at every epoch start, so the seed and the epoch stand for it."""
        return {
            "epoch": epoch,
            "config": dataclasses.asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.context.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def _summary(self) -> dict[str, Any]:
        last = self.history[-1]
        return {
            "output": str(self.folder.path),
            "epochs": last["epoch"],
            "warmup_epochs": self.plan.warmup_epochs,
            "top1": last["top1"],
            "nbdt_soft_top1": last["nbdt_soft_top1"],
            "nbdt_hard_top1": last["nbdt_hard_top1"],
            "best": self.best,
            "train_images_per_s": last["train_images_per_s"],
        }


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does: whole files, a line saying how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
