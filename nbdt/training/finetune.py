"""Tree-supervised fine-tuning of a saved model (a pruned one too) with ``nbdt-train``'s parts,
optionally distilling the decisions of the uncompressed model.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from nbdt.model import NBDT
from nbdt.training.outputs import write_outputs

if TYPE_CHECKING:
    from nbdt.training.config import TrainConfig


def finetune(
    config: TrainConfig, *, teacher: NBDT | None = None, distill: float = 0.5
) -> tuple[NBDT, list[dict[str, Any]]]:
    """Tree-supervised fine-tuning of the model file ``config.checkpoint`` (a pruned one
    rebuilds from it) with ``nbdt-train``'s parts: the plan's network and data, then per epoch
    :func:`~nbdt.training.loop.train_one_epoch` and :func:`~nbdt.training.loop.validate`;
    ``config.output`` becomes a run folder as ``nbdt-train`` writes (args.json, last.pt, best.pt,
    metrics.jsonl, its output stages). ``config.hierarchy`` "checkpoint" keeps the tree, "induced"
    induces it again from the head first. With a ``teacher`` (the uncompressed model) and
    ``distill`` > 0, a share ``distill`` of the loss is :class:`~nbdt.loss.DecisionDistillLoss`'s
    decision KL to the teacher (1: the teacher's decisions alone), so that the tuned model keeps its
    decisions. Returns the tuned model and the epochs' metrics."""
    from nbdt import data
    from nbdt.distributed import amp_dtype, start_process
    from nbdt.loss import DecisionDistillLoss
    from nbdt.training.config import make_optimizer
    from nbdt.training.loop import StepContext, eval_loader, train_loader, train_one_epoch, validate
    from nbdt.training.outputs import RunResult
    from nbdt.training.plan import make_plan
    from nbdt.training.progress import Progress
    from nbdt.training.run_folder import RunFolder

    config.validate()
    runtime = start_process(config.device)
    plan = make_plan(config, runtime.device)
    if plan.checkpoint is None:
        raise ValueError("finetune: config.checkpoint must name the model file to fine-tune")
    network, model_kwargs = plan.network()
    device = runtime.device
    data_config = plan.checkpoint.get("data_config") or plan.data_config(network, model_kwargs)
    hierarchy = plan.fixed_hierarchy() or plan.induce(network)
    model = NBDT(
        network,
        hierarchy,
        plan.checkpoint["mode"],
        plan.config.node_score,
        arch=plan.config.arch,
        model_kwargs=model_kwargs,
        data_config=data_config,
    ).to(device)
    model.pruned = plan.checkpoint.get("pruned")  # training keeps the architecture
    amp = amp_dtype(device) if plan.config.amp else None
    context = StepContext(runtime, amp, Progress(runtime.main, plan.config.quiet))
    train_transform = data.BatchTransform(data_config, augment=plan.config.augment).to(device)
    eval_transform = data.BatchTransform(data_config).to(device)
    loader, sampler = train_loader(plan.train_set, plan.config, runtime)
    test = eval_loader(plan.test_set, plan.config, runtime)
    optimizer = make_optimizer(plan.config, network)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=plan.config.epochs * len(loader)
    )
    if teacher is not None and teacher.hierarchy != hierarchy:
        raise ValueError("finetune: the teacher's hierarchy differs (distill with the same tree)")
    distilling = teacher is not None and distill > 0
    teacher_network = copy.deepcopy(teacher.model).to(device).eval() if distilling else None
    folder = RunFolder(plan.config.output, runtime.main)
    folder.start(plan.config)
    folder.publish_hierarchy(hierarchy)
    history: list[dict[str, Any]] = []
    for epoch in range(plan.config.epochs):
        sampler.set_epoch(epoch)
        criterion = plan.criterion(epoch, hierarchy, device)
        loss = DecisionDistillLoss(criterion, model.rules, distill) if distilling else criterion
        stats = train_one_epoch(
            network, loader, loss, optimizer, scheduler, train_transform, context,
            description=f"fine-tune {epoch + 1}/{plan.config.epochs}", teacher=teacher_network,
        )  # fmt: skip
        metrics = validate(network, test, criterion, model.rules, eval_transform, context)
        history.append({"epoch": epoch + 1, "phase": "finetune", **stats, **metrics})
        best = max(history, key=lambda m: m["nbdt_soft_top1"]) is history[-1]
        state = {"epoch": epoch + 1, "config": dataclasses.asdict(plan.config)}
        folder.save_epoch(model.checkpoint(train=state), history, best)
    result = RunResult(
        model, plan.config, plan.classes, plan.test_set, eval_transform, context.progress
    )
    write_outputs(folder, result)
    return model.eval(), history
