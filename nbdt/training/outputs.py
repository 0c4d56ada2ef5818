"""What a finished run writes after its last epoch: node examples, the hierarchy page, explained
test images and the evaluation report, one stage each, in order (:data:`OUTPUT_STAGES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nbdt import data as datasets
from nbdt._io import atomic_path
from nbdt._messages import for_terminal, one_line
from nbdt.classes import DatasetClasses
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training.config import TrainConfig
from nbdt.training.run_folder import RunFolder, write_json
from nbdt.visualize import explanation_html, hierarchy_html


# ---------------------------------------------------------------------------- run folder
@dataclass
class RunResult:
    """What a finished run hands its output stages: the final model and the test images."""

    model: NBDT
    config: TrainConfig
    classes: DatasetClasses
    test_set: datasets.ImageDataset
    transform: nn.Module
    progress: Progress
    eval_set: datasets.ImageDataset | None = None  # the test split with held-out classes
    train_set: datasets.ImageDataset | None = None
    examples: Any = None  # the run's NodeExamples, once the node_examples stage made them


OutputStage = Callable[["RunFolder", RunResult], None]


def node_examples(folder: RunFolder, result: RunResult) -> None:
    """node_examples.npz: each node's representative and confused training images (the pages
    show them); off with --no-examples."""
    if not result.config.examples or result.train_set is None:
        return
    from nbdt.evidence.examples import node_examples as find_examples

    result.examples = find_examples(
        result.model.eval(),
        result.train_set,
        batch_size=result.config.batch_size,
        progress=result.progress,
        distributed=False,
    )
    result.examples.save(folder.path / "node_examples.npz")


def hierarchy_page(folder: RunFolder, result: RunResult) -> None:
    """hierarchy.html (with the node examples when there are some)."""
    hierarchy_html(
        result.model.hierarchy,
        folder.path / "hierarchy.html",
        title=f"{result.config.dataset} hierarchy",
        examples=result.examples,
    )


def explanations(folder: RunFolder, result: RunResult) -> None:
    """Explain the first ``--explain`` test images: text, explanations.json/.html and PNGs."""
    count = result.config.explain
    if not count:
        return
    test_set, model = result.test_set, result.model.eval()
    images, targets = zip(*(test_set[i] for i in range(min(count, len(test_set)))), strict=True)
    device = next(model.parameters()).device
    batch = result.transform(torch.stack(images).to(device))
    if result.examples is not None:
        try:
            explained = model.explain(batch, evidence=True, examples=result.examples)
        except (ValueError, ImportError) as e:  # no spatial map, or no grad-cam: examples only
            result.progress.line(f"explanations without heatmaps: {one_line(e)}")
            explained = model.explain(batch, examples=result.examples)
    else:
        explained = model.explain(batch)
    pictures = [datasets.to_pil(image) for image in images]
    (folder.path / "images").mkdir(exist_ok=True)
    records = []
    for i, (picture, target, explanation) in enumerate(
        zip(pictures, targets, explained, strict=True)
    ):
        path = folder.path / "images" / f"test-{i}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        truth = result.classes.names[int(target)]
        records.append({"image": str(path), "true_label": truth, **explanation.to_dict()})
        result.progress.line(f"{path.name} (true: {for_terminal(truth)}) {explanation}")
    write_json(folder.path / "explanations.json", records)
    explanation_html(
        explained,
        pictures,
        folder.path / "explanations.html",
        hierarchy=result.model.hierarchy,
        title=f"{result.config.arch} on {result.config.dataset}",
        true_labels=[record["true_label"] for record in records],
    )


def evaluation_report(folder: RunFolder, result: RunResult) -> None:
    """eval.json and report.html: the hierarchy-aware evaluation of the final model on the test
    split, held-out classes included (docs/metrics.md), with the run's training curves."""
    if not result.config.report:
        return
    from nbdt.evaluation.evaluate import evaluate

    config = result.config
    evaluated = evaluate(
        result.model,
        result.eval_set if result.eval_set is not None else result.test_set,
        holdout=config.holdout_classes or (),
        batch_size=config.batch_size,
        workers=config.workers,
        distributed=False,
        progress=result.progress,
    )
    title = f"{config.arch} on {config.dataset}: evaluation"
    evaluated.write(folder.path, history=folder.history(), title=title)
    result.progress.line(evaluated.summary())


OUTPUT_STAGES: list[OutputStage] = [
    node_examples,
    hierarchy_page,
    explanations,
    evaluation_report,
]

"""What every run writes at its end, in order; a stage may write nothing (see its setting)."""


def write_outputs(
    folder: RunFolder, result: RunResult, stages: Sequence[OutputStage] = OUTPUT_STAGES
) -> None:
    """Run the output stages, in order (main process only)."""
    if folder.main:
        for stage in stages:
            stage(folder, result)
