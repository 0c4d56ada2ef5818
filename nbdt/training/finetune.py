"""Tree-supervised fine-tuning of a saved model (a pruned one too) with ``nbdt-train``'s parts and
its epoch loop, optionally distilling the decisions of the uncompressed model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist

from nbdt import data
from nbdt.distributed import start_process
from nbdt.loss import DecisionDistillLoss
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training.config import TrainConfig, make_optimizer
from nbdt.training.loop import Epoch, EpochLoop, StepContext, Validation, eval_loader, train_loader
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.plan import make_plan
from nbdt.training.run_folder import RunFolder


def finetune(
    config: TrainConfig, *, teacher: NBDT | None = None, distill: float = 0.5
) -> tuple[NBDT, list[dict[str, Any]]]:
    """Tree-supervised fine-tuning of the model file ``config.checkpoint`` (a pruned one
    rebuilds from it) with ``nbdt-train``'s parts: the plan's network and data, then the epochs of
    :class:`~nbdt.training.loop.EpochLoop` (a per-epoch line; a diverging loss stops it with
    :class:`~nbdt.training.loop.LossDiverged`); ``config.output`` becomes a run folder as
    ``nbdt-train`` writes (args.json, last.pt, best.pt, metrics.jsonl, its output stages).
    ``config.hierarchy`` "checkpoint" keeps the tree, "induced" induces it again from the head
    first. With a ``teacher`` (the uncompressed model) and ``distill`` > 0, a share ``distill`` of
    the loss is :class:`~nbdt.loss.DecisionDistillLoss`'s decision KL to the teacher (1: the
    teacher's decisions alone), so that the tuned model keeps its decisions. Returns the tuned
    model and the epochs' metrics."""
    config.validate()
    process = start_process(config.device)
    try:
        plan = make_plan(config, process.device)
        config = plan.config  # resolved (the checkpoint's architecture, the learning rate)
        if plan.checkpoint is None:
            raise ValueError("finetune: config.checkpoint must name the model file to fine-tune")
        network, model_kwargs = plan.network()
        device = process.device
        data_config = plan.checkpoint.get("data_config") or plan.data_config(network, model_kwargs)
        hierarchy = plan.fixed_hierarchy() or plan.induce(network)
        model = NBDT(
            network,
            hierarchy,
            plan.checkpoint["mode"],
            config.node_score,
            arch=config.arch,
            model_kwargs=model_kwargs,
            data_config=data_config,
        ).to(device)
        model.pruned = plan.checkpoint.get("pruned")  # training keeps the architecture
        context = StepContext(process, config.amp, Progress(process.main, config.quiet))
        train_transform = data.BatchTransform(data_config, augment=config.augment).to(device)
        eval_transform = data.BatchTransform(data_config).to(device)
        loader, sampler = train_loader(plan.train_set, config, process)
        optimizer = make_optimizer(config, network)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * len(loader)
        )
        if teacher is not None and teacher.hierarchy != hierarchy:
            raise ValueError(
                "finetune: the teacher's hierarchy differs (distill with the same tree)"
            )
        distilling = teacher is not None and distill > 0
        teacher_network = copy.deepcopy(teacher.model).to(device).eval() if distilling else None
        folder = RunFolder(config.output, process.main)
        folder.start(config)
        folder.publish_hierarchy(hierarchy)
        validation = Validation(
            network, eval_loader(plan.test_set, config, process), eval_transform
        )
        loop = EpochLoop(
            network, optimizer, scheduler, context, epochs=config.epochs, name="fine-tune",
            transform=train_transform, validation=validation, folder=folder, config=config,
        )  # fmt: skip

        def epoch(index: int) -> Epoch:
            sampler.set_epoch(index)
            criterion = plan.criterion(index, hierarchy, device)
            loss = DecisionDistillLoss(criterion, model.rules, distill) if distilling else None
            return Epoch(
                "finetune", loader, criterion, lambda: model, loss=loss, teacher=teacher_network
            )

        history = loop.run(epoch)
        result = RunResult(
            model, config, plan.classes, plan.test_set, eval_transform, context.progress
        )
        write_outputs(folder, result)
        if process.distributed:
            dist.barrier()  # rank 0 writes the output stages: leave the group together
    finally:
        RunFolder(config.output, process.main).release()
        if process.distributed:
            dist.destroy_process_group()
    return model.eval(), history
