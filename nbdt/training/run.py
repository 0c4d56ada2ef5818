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
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nbdt import data as datasets
from nbdt._messages import for_terminal, one_line
from nbdt.distributed import Process, start_process
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training.config import TrainConfig, make_optimizer
from nbdt.training.loop import (
    Epoch,
    EpochLoop,
    StepContext,
    Validation,
    eval_loader,
    seed_epoch,
    train_loader,
)
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import Plan, make_plan
from nbdt.training.run_folder import RunFolder


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the recipe and return the summary (also printed, with the output files).

    Raises ``ValueError`` / ``FileNotFoundError`` for bad input,
    :class:`~nbdt.training.loop.LossDiverged` when the loss stops being finite and
    :class:`~nbdt.training.loop.Interrupted` on Ctrl-C.
    """
    config.validate()
    process = start_process(config.device)
    try:
        with _sigterm_as_ctrl_c():
            plan = make_plan(config, process.device)
            if config.head_only:
                from nbdt.training.head_only import fit_head

                summary = fit_head(plan, process)
            else:
                summary = _Fit(plan, process).run()
        if process.distributed:
            dist.barrier()  # rank 0 still writes pages and explanations: leave the group together
        return summary
    finally:
        RunFolder(config.output, process.main).release()
        if process.distributed:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- the run
class _Fit:
    """The recipe of ``nbdt-train`` over the pieces above: the plan's network and data,
    warm-up then tree-supervised epochs through the :class:`~nbdt.training.loop.EpochLoop`, the
    output stages at the end."""

    def __init__(self, plan: Plan, process: Process):
        plan.check_tree_source()
        self.plan, self.process = plan, process
        self.config = config = plan.config
        self.folder = RunFolder(config.output, process.main)
        device = process.device

        torch.manual_seed(config.seed)
        self.model, self.model_kwargs = plan.network()
        self.data_config = plan.data_config(self.model, self.model_kwargs)
        self.train_transform = datasets.BatchTransform(self.data_config, augment=config.augment)
        self.eval_transform = datasets.BatchTransform(self.data_config)
        self.hierarchy = plan.fixed_hierarchy()
        if self.hierarchy is None and plan.warmup_epochs == 0:  # the checkpoint's head's tree
            self.hierarchy = plan.induce(self.model)
        self.context = StepContext(process, config.amp, Progress(process.main, config.quiet))
        self.model.to(device, memory_format=self.context.memory_format)
        self.train_transform.to(device)
        self.eval_transform.to(device)

        self.train_loader, self.sampler = train_loader(plan.train_set, config, process)
        test_loader = eval_loader(plan.test_set, config, process)
        optimizer = make_optimizer(config, self.model)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=plan.total_epochs * len(self.train_loader)
        )
        self.loop = EpochLoop(
            self.model, optimizer, scheduler, self.context, epochs=plan.total_epochs,
            transform=self.train_transform, folder=self.folder, config=config, resumable=True,
            validation=Validation(self.model, test_loader, self.eval_transform),
        )  # fmt: skip
        self.resumed: dict[str, Any] | None = None
        self.resume_note = self._resume() if config.resume else None

        if process.distributed:
            self.loop.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.loop.model = torch.compile(self.loop.model)

    def _resume(self) -> str:
        """Restore the run in ``last.pt`` of the output folder, if there is one; say what."""
        checkpoint, note = self.folder.resume_from(self.config, self.process.device)
        if checkpoint is None:
            return note
        state, loop = checkpoint["train"], self.loop
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            loop.optimizer.load_state_dict(state["optimizer"])
            loop.scheduler.load_state_dict(state["scheduler"])
            self.context.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"{self.folder.path / 'last.pt'}: cannot restore the run ({one_line(e)})"
            ) from None
        # --epochs may have grown: the schedule runs to the new end
        loop.scheduler.T_max = self.plan.total_epochs * len(self.train_loader)
        self.resumed = checkpoint
        loop.start = self.folder.saved_epoch = int(state["epoch"])
        loop.history = list(state["history"])
        loop.best = state["best"]
        if self.hierarchy is None and loop.start >= self.plan.warmup_epochs:
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
        progress.line(self._intent())
        progress.estimate(self.plan.total_epochs - self.loop.start, "training epoch")
        self.loop.run(self._epoch)
        summary = self.loop.summary(self.plan.warmup_epochs)
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

    def _intent(self) -> str:
        """What the run is about to do, said before the hours are spent."""
        plan, config = self.plan, self.config
        epochs = f"{plan.warmup_epochs} warm-up + {config.epochs} tree-supervised epochs"
        return (
            f"training {config.arch} on {len(plan.train_set)} {config.dataset} images,"
            f" {epochs} (from epoch {self.loop.start + 1}), batch {config.batch_size}, on"
            f" {self.context.device}; evaluating {len(plan.test_set)} test images per epoch"
        )

    def _epoch(self, epoch: int) -> Epoch:
        """The epoch's setup: the phase's tree and loss, the sampler's and augmentation's
        seeds; after the pass, a warm-up epoch is evaluated with the tree of its head."""
        plan, config = self.plan, self.config
        tree_phase = epoch >= plan.warmup_epochs
        criterion = plan.criterion(epoch, self.hierarchy, self.process.device)
        self.sampler.set_epoch(epoch)
        generator = seed_epoch(config.seed, epoch, self.process.rank, self.process.device)

        def trained() -> NBDT:
            hierarchy = self.hierarchy
            if not tree_phase and config.hierarchy == "induced":
                # Evaluate the warm-up with the tree of the head as it is now; the last one stays.
                hierarchy = plan.induce(self.model, warmed_up=True)
                self.folder.publish_hierarchy(hierarchy)
                if epoch + 1 == plan.warmup_epochs:
                    self.hierarchy = hierarchy
            return self._nbdt(hierarchy)

        phase = "tree" if tree_phase else "warmup"
        return Epoch(phase, self.train_loader, criterion, trained, generator)

    def _nbdt(self, hierarchy: Hierarchy) -> NBDT:
        return NBDT(
            self.model,
            hierarchy,
            node_score=self.config.node_score,
            arch=self.config.arch,
            model_kwargs=self.model_kwargs,
            data_config=self.data_config,
        ).to(self.process.device)


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
